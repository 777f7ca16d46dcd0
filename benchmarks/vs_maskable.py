"""htsrl-aio's legal-action masks against sb3-contrib's MaskablePPO, on sb3-contrib's own invalid-action env.

The env is `InvalidActionEnvDiscrete(dim=80, n_invalid_actions=60, ep_length=100)`: the observation is a
state in 0..79, the reward 1 when the action equals it (so at most 100 per episode), and 60 of the 79
other actions are forbidden at each step (`action_masks()`); a uniformly random legal action earns 5 per
episode, a random action 1.25. benchmarks/maskable_env.py seeds it from `reset(seed=...)` (it is not
otherwise), so htsrl-aio's runs are reproducible.

Methods, each for `--steps` env steps over `--seeds`, alternating (so a drift in the machine's load hits
all alike):

- hts, sync: htsrl-aio PPO (`--mode hts|sync`) with the env's mask (`--action-mask auto`, the default);
- hts-nomask: htsrl-aio hts PPO with `--action-mask off`;
- maskable-ppo: sb3-contrib MaskablePPO;
- sb3-ppo: Stable-Baselines3 PPO, no mask.

All with the same PPO settings (PPO_SETTINGS: htsrl-aio's PPO defaults, spelled out in SB3's terms for
SB3) and the same network (separate 64x64 tanh actor and critic over the one-hot state), except the value
clip: htsrl-aio's (CleanRL's: the larger of the clipped and unclipped losses) and SB3's (`clip_range_vf`:
the clipped prediction only) are not the same loss, so both run without it (SB3's default; htsrl-aio's
`--no-clip-vloss`). Reported per method: the mean return of the last 100 episodes at the end (IQM over
seeds with a 95% percentile-bootstrap CI), env steps/s (the first 10% of each run's rows skipped), curves
against env steps (`--plot`). The SB3 methods run in this process and cost several times what htsrl-aio's
do; docs/learning.md ("Legal-action masks against MaskablePPO") has the results and the command.

    python benchmarks/vs_maskable.py --seeds 3 --steps 100000 --out runs/vs_maskable
    python benchmarks/vs_maskable.py --seeds 1 --steps 2048 --out /tmp/vs_maskable   # a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

from maskable_env import invalid_action_env
from plotting import pyplot, save
from vs_async import iqm_ci, steady_sps

HERE = Path(__file__).resolve().parent
METHODS = ("hts", "sync", "hts-nomask", "maskable-ppo", "sb3-ppo")
PPO_SETTINGS: dict[str, Any] = {"num_envs": 8, "rollout": 64, "minibatches": 4, "epochs": 4, "lr": 1e-3,
                                "gamma": 0.99, "gae_lambda": 0.95, "clip": 0.2, "vf_coef": 0.5,
                                "max_grad_norm": 0.5}  # and: ent_coef 0, lr annealed to 0, no value clip
LAST_EPISODES = 100  # the return reported is the mean over this many last episodes, as htsrl-aio's


def run_htsrl(method: str, seed: int, steps: int, logdir: Path) -> dict[str, Any]:
    """One htsrl-aio run, as `htsrl-aio train` in its own process; its rows and final return."""
    p = PPO_SETTINGS
    cmd = [sys.executable, "-m", "htsrl_aio.cli", "train", "--env", "maskable_env:invalid_action_env",
           "--mode", "sync" if method == "sync" else "hts",
           "--action-mask", "off" if method == "hts-nomask" else "auto",
           "--num-envs", str(p["num_envs"]), "--rollout", str(p["rollout"]),
           "--minibatches", str(p["minibatches"]), "--epochs", str(p["epochs"]), "--lr", str(p["lr"]),
           "--gamma", str(p["gamma"]), "--gae-lambda", str(p["gae_lambda"]), "--clip-coef", str(p["clip"]),
           "--vf-coef", str(p["vf_coef"]), "--max-grad-norm", str(p["max_grad_norm"]), "--ent-coef", "0",
           "--anneal-lr", "--no-clip-vloss", "--hidden", "64", "64", "--total-steps", str(steps),
           "--seed", str(seed), "--logdir", str(logdir), "--no-progress", "--checkpoint-every", "0"]
    path = [str(HERE), str(HERE.parent), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    logdir.mkdir(parents=True, exist_ok=True)
    log = logdir.with_name(logdir.name + ".log")
    with log.open("w") as out:
        rc = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
    if rc != 0:
        return {"error": f"exit status {rc}, see {log}", "rows": []}
    rows = [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]
    return {"final_return": json.loads((logdir / "summary.json").read_text())["episode_return_mean"],
            "rows": [{k: r[k] for k in ("global_step", "wall_time_s", "episode_return_mean")} for r in rows]}


def run_sb3(method: str, seed: int, steps: int) -> dict[str, Any]:
    """One SB3 / sb3-contrib run in this process; a row per rollout, as htsrl-aio logs one per update."""
    from sb3_contrib import MaskablePPO
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    p = PPO_SETTINGS
    returns: deque[float] = deque(maxlen=LAST_EPISODES)
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()

    class Rows(BaseCallback):
        def _on_step(self) -> bool:
            returns.extend(float(i["episode"]["r"]) for i in self.locals["infos"] if "episode" in i)
            return True

        def _on_rollout_end(self) -> None:
            rows.append({"global_step": self.num_timesteps, "wall_time_s": time.perf_counter() - start,
                         "episode_return_mean": sum(returns) / len(returns) if returns else None})

    algo = MaskablePPO if method == "maskable-ppo" else PPO
    # make_vec_env seeds env i with seed + i at its first reset, as htsrl-aio derives its env seeds
    envs = make_vec_env(invalid_action_env, n_envs=p["num_envs"], seed=seed)
    model = algo("MlpPolicy", envs, seed=seed, device="cpu", n_steps=p["rollout"],
                 batch_size=p["num_envs"] * p["rollout"] // p["minibatches"],
                 n_epochs=p["epochs"], learning_rate=lambda remaining: remaining * p["lr"], gamma=p["gamma"],
                 gae_lambda=p["gae_lambda"], clip_range=p["clip"], clip_range_vf=None, ent_coef=0.0,
                 vf_coef=p["vf_coef"], max_grad_norm=p["max_grad_norm"],
                 policy_kwargs={"net_arch": {"pi": [64, 64], "vf": [64, 64]}})
    model.learn(steps, callback=Rows())
    return {"final_return": sum(returns) / len(returns), "rows": rows}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if "error" not in r]
    sps = [s for s in (steady_sps(r["rows"]) for r in ok) if s is not None]
    return {"runs": len(runs), "failed": len(runs) - len(ok),
            "return": iqm_ci([r["final_return"] for r in ok]),
            "steady_sps": sum(sps) / len(sps) if sps else None}


def print_table(summary: dict[str, dict[str, Any]], steps: int) -> None:
    print(f"\n{steps} env steps per run\n")
    print("| method | runs (failed) | final return, IQM [95% CI] (max 100) | env steps/s |")
    print("|---|---|---|---|")
    for method, s in summary.items():
        ret = s["return"]
        value = "-" if ret["iqm"] is None else f"{ret['iqm']:.1f}"
        if ret["ci"] is not None:
            value += f" [{ret['ci'][0]:.1f}, {ret['ci'][1]:.1f}]"
        sps = "-" if s["steady_sps"] is None else f"{s['steady_sps']:.0f}"
        print(f"| {method} | {s['runs']} ({s['failed']}) | {value} | {sps} |")


def plot(runs: dict[str, list[dict[str, Any]]], path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for color, (method, method_runs) in zip(("C0", "C1", "C2", "C3", "C4"), runs.items()):
        for i, run in enumerate(method_runs):
            rows = [r for r in run["rows"] if r["episode_return_mean"] is not None]
            ax.plot([r["global_step"] for r in rows], [r["episode_return_mean"] for r in rows], color=color,
                    alpha=0.7, label=method if i == 0 else None)
    ax.set_xlabel("env steps")
    ax.set_ylabel(f"episode return (mean of the last {LAST_EPISODES})")
    ax.set_title("InvalidActionEnvDiscrete(dim=80, n_invalid_actions=60)")
    ax.legend()
    save(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3, help="runs per method, seeds 1..N")
    parser.add_argument("--steps", type=int, default=100_000, help="env steps per run")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--out", type=Path, default=Path("runs/vs_maskable"),
                        help="where the folder (named by date and time) of runs and results.json goes")
    parser.add_argument("--plot", type=Path, default=Path("docs/img/vs_maskable.png"))
    args = parser.parse_args()
    runs: dict[str, list[dict[str, Any]]] = {method: [] for method in args.methods}
    load = os.getloadavg()
    stamp = time.strftime("%Y%m%d-%H%M%S")  # a fresh folder: htsrl-aio refuses a run directory in use
    for seed in range(1, args.seeds + 1):
        for method in args.methods:
            started = time.perf_counter()
            run = (run_sb3(method, seed, args.steps) if method in ("maskable-ppo", "sb3-ppo")
                   else run_htsrl(method, seed, args.steps, args.out / stamp / f"{method}-s{seed}"))
            runs[method].append(run)
            print(f"{method} seed {seed}: {run.get('error') or round(run['final_return'], 1)} "
                  f"in {time.perf_counter() - started:.0f}s", flush=True)
    summary = {method: summarise(method_runs) for method, method_runs in runs.items()}
    print_table(summary, args.steps)
    plot(runs, args.plot)
    (args.out / stamp).mkdir(parents=True, exist_ok=True)
    (args.out / stamp / "results.json").write_text(json.dumps(
        {"settings": {**PPO_SETTINGS, "steps": args.steps, "seeds": args.seeds}, "load_average": load,
         "load_average_end": os.getloadavg(), "summary": summary, "runs": runs}, indent=1))
    print(f"load average at start {load[0]:.1f}, at end {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
