#!/usr/bin/env bash
# The GPU check of issue 28 (part 3): one command, at most 8 minutes on 16 cores + one H100/H200 with no
# internet, printing ONE table (and writing it as JSON under $OUT when set):
#   - CUDA bits: CartPole PPO and Pong PPO (atari-ppo) trained twice on the GPU: identical or not, and
#     where a CPU run of the same settings differs (compared as `htsrl-aio diff` does);
#   - raw ale-py (AtariVectorEnv, random actions, all cores) at 64, 128 and 256 envs;
#   - Pong hts PPO (atari-ppo, engine backend) at 64, 128 and 256 envs with inference blocks of 32 and 64
#     (benchmarks/atari_throughput.py --parts scaling), each as a fraction of raw ale-py;
#   - torch.compile: Pong hts PPO at the most envs and the largest block again with --torch-compile all
#     (compiled encoders in inference and learner), as a fraction of the eager run; CUDA graphs:
#     htsrl-aio has no such option, so the table says "not available".
# Every step runs under `timeout`, cut to what is left of the budget, so the whole fits in 8 minutes;
# a step that fails or times out is a row saying so, and the rest still runs.
#
# It uses a python that imports torch ($PYTHON, else python3 or python). For anything else missing it
# tries pip once, bounded, into a scratch venv that sees that python's packages (pip rarely works
# offline), and the table says what is still missing. htsrl-aio runs from this working tree (PYTHONPATH);
# nothing is installed into the system.
#
#   bash scripts/gpu-check.sh               # on the GPU machine
#   bash scripts/gpu-check.sh --cpu-smoke   # every step with tiny sizes on the CPU (about 2 minutes)
#   bash scripts/gpu-check.sh --budget 300  # seconds for the whole check (default 450)
set -u

REPO=$(cd "$(dirname "$0")/.." && pwd)
MODE=gpu
BUDGET=450
while (( $# )); do
    case $1 in
        --cpu-smoke) MODE=cpu-smoke ;;
        --budget) BUDGET=${2:?--budget takes seconds}; shift ;;
        *) echo "gpu-check: unknown option $1 (use --cpu-smoke or --budget SECONDS)" >&2; exit 2 ;;
    esac
    shift
done
RESERVE=15  # seconds kept for the table at the end
START=$SECONDS
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
RESULTS=${OUT:-$WORK}/gpu-check
mkdir -p "$RESULTS"
trap 'rm -rf "$WORK"/bits-* "$WORK/pong-compiled" "$WORK/venv"' EXIT  # the runs' directories go, the results stay
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

say() { echo "[gpu-check $(( SECONDS - START ))s] $*"; }

# run_step NAME LIMIT_S CMD...: CMD under `timeout` (LIMIT_S, or what is left of the budget), its output
# in $RESULTS/NAME.log and one line on how it ended in $RESULTS/NAME.status.
run_step() {
    local name=$1 limit=$2 left rc status
    shift 2
    left=$(( BUDGET - (SECONDS - START) - RESERVE ))
    if (( left < 10 )); then
        echo "skipped: the ${BUDGET}s budget was spent" > "$RESULTS/$name.status"
        say "$name: skipped (budget spent)"
        return
    fi
    (( limit > left )) && limit=$left
    say "$name (at most ${limit}s)"
    timeout -k 10 "$limit" "$@" > "$RESULTS/$name.log" 2>&1
    rc=$?
    case $rc in
        0) status=ok ;;
        124|137) status="timed out after ${limit}s" ;;
        *) status="failed (exit $rc): $(grep -v '^\s*$' "$RESULTS/$name.log" | tail -n 1 | cut -c1-160)" ;;
    esac
    echo "$status" > "$RESULTS/$name.status"
    say "$name: $status"
}

# --- Python and what it can import --------------------------------------------------------------------
PY=
for candidate in "${PYTHON:-}" python3 python; do
    if [[ -n $candidate ]] && command -v "$candidate" > /dev/null && "$candidate" -c "import torch" 2> /dev/null
    then PY=$candidate; break; fi
done
if [[ -z $PY ]]; then
    PY=$(command -v python3 || command -v python || true)
fi
if [[ -z $PY ]]; then
    echo "gpu-check: no python on this machine; nothing can run." >&2
    exit 1
fi
missing() {  # the required modules this python cannot find (gymnasium must be 1.0 or later)
    "$PY" - << 'EOF'
import importlib.metadata, importlib.util
gone = [name for name in ("torch", "numpy", "gymnasium", "ale_py", "tqdm") if importlib.util.find_spec(name) is None]
if "gymnasium" not in gone and int(importlib.metadata.version("gymnasium").split(".")[0]) < 1:
    gone.append("gymnasium>=1.0")  # an older one is installed (machine.json names it)
print(" ".join(gone))
EOF
}
MISSING=$(missing)
PIP_NOTE="not needed"
if [[ -n $MISSING ]]; then
    # Into a scratch venv that sees this python's packages (torch above all), never into the system.
    installable=$(echo "$MISSING" | tr ' ' '\n' | grep -v '^torch$' | sed 's/^ale_py$/ale-py/' | tr '\n' ' ')
    if [[ -z ${installable// /} ]]; then
        PIP_NOTE="torch cannot come from pip here: use a python with a CUDA build of torch (PYTHON=...)"
    elif ! "$PY" -m venv --system-site-packages "$WORK/venv" > "$RESULTS/venv.log" 2>&1; then
        PIP_NOTE="no venv module for $PY (python3-venv), so nothing was installed"
    else
        say "missing: $MISSING; trying pip once into a scratch venv (no internet is likely)"
        if timeout 90 "$WORK/venv/bin/python" -m pip install --quiet --retries 0 --timeout 5 $installable \
            > "$RESULTS/pip.log" 2>&1
        then PY=$WORK/venv/bin/python; PIP_NOTE="installed $installable into a scratch venv"
        else PIP_NOTE="pip failed (offline?), see pip.log"; fi
        MISSING=$(missing)
    fi
fi
DEVICE=cpu
if [[ $MODE == gpu ]] && "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2> /dev/null; then
    DEVICE=cuda
fi
"$PY" - "$RESULTS/machine.json" "$MODE" "$DEVICE" "$MISSING" "$PIP_NOTE" "$PY" << 'EOF'
import json, os, platform, subprocess, sys
path, mode, device, missing, pip_note, python = sys.argv[1:]
info = {"mode": mode, "device": device, "missing": missing.split(), "pip": pip_note, "python": python,
        "python_version": platform.python_version(), "cores": len(os.sched_getaffinity(0))}
try:
    info["cpu"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
except (OSError, StopIteration):
    info["cpu"] = platform.processor()
for name in ("torch", "numpy", "gymnasium", "ale_py"):
    try:
        info[name] = __import__(name).__version__
    except Exception:
        info[name] = None
try:
    import torch
    info["torch_cuda"] = torch.version.cuda
    info["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
except Exception:
    info["gpu"] = None
json.dump(info, open(path, "w"), indent=1)
print(f"python {info['python_version']} ({python}), torch {info['torch']}, gymnasium {info['gymnasium']}, "
      f"ale-py {info['ale_py']}; {info['cores']} cores ({info['cpu']}); GPU: {info['gpu']}; device {device}")
EOF
if [[ -n $MISSING ]]; then
    say "still missing: $MISSING ($PIP_NOTE); the steps that need them are skipped"
    [[ " $MISSING " == *" torch "* ]] && say "torch: run with PYTHON=/path/to/a/python/with/torch (a CUDA build)"
fi
needs() {  # needs MODULE...: true when none of them is missing
    local m
    for m in "$@"; do [[ " $MISSING " == *" $m "* || " $MISSING " == *" $m>="* ]] && return 1; done
    return 0
}

# --- Sizes --------------------------------------------------------------------------------------------
if [[ $MODE == gpu ]]; then
    ENVS="64 128 256"; BLOCKS="32 64"; ROLLOUTS=3; ROLLOUT=128; RAW_STEPS=32768
    CARTPOLE=(--num-envs 8 --rollout 64 --total-steps 4096)
    PONG=(--preset atari-ppo --num-envs 32 --inference-block 32 --total-steps 8192)
else  # start-up dominates: one learner thread, one worker, two updates
    ENVS="2 4"; BLOCKS="2 4"; ROLLOUTS=2; ROLLOUT=16; RAW_STEPS=256
    CARTPOLE=(--num-envs 2 --rollout 16 --total-steps 64 --workers 1 --learner thread)
    PONG=(--preset atari-ppo --num-envs 2 --rollout 16 --inference-block 2 --total-steps 64 --learner thread)
fi
echo "$ENVS" > "$RESULTS/envs.txt"; echo "$BLOCKS" > "$RESULTS/blocks.txt"

# --- 1. CUDA bits: the same run twice on the device, and once on the CPU (compared in the table) -------
train() {  # train NAME DEVICE ARGS...
    local name=$1 device=$2
    shift 2
    run_step "$name" 120 "$PY" -m htsrl_aio train "$@" --device "$device" --logdir "$WORK/$name" \
        --no-progress --no-tensorboard --checkpoint-every 0
}
if needs torch numpy gymnasium tqdm; then
    for env in cartpole pong; do
        if [[ $env == pong ]]; then
            needs ale_py || continue
            args=(--env ALE/Pong-v5 "${PONG[@]}")
        else
            args=(--env CartPole-v1 "${CARTPOLE[@]}")
        fi
        train "bits-$env-device-a" "$DEVICE" "${args[@]}"
        train "bits-$env-device-b" "$DEVICE" "${args[@]}"
        [[ $DEVICE == cpu ]] || train "bits-$env-cpu" cpu "${args[@]}"
    done
fi

# --- 2. raw ale-py on the same cores ------------------------------------------------------------------
if needs numpy gymnasium ale_py torch tqdm; then  # atari_throughput.py imports htsrl_aio
    for n in $ENVS; do
        run_step "raw-$n" 60 "$PY" "$REPO/benchmarks/atari_throughput.py" --parts raw --num-envs "$n" \
            --collect-steps "$RAW_STEPS" --repeats 1 --no-sb3 --plot "$WORK/raw-$n.png"
    done
fi

# --- 3. Pong hts PPO at each number of envs and inference block ----------------------------------------
if needs torch numpy gymnasium ale_py tqdm; then
    for block in $BLOCKS; do
        run_step "pong-block-$block" 200 "$PY" "$REPO/benchmarks/atari_throughput.py" --parts scaling \
            --device "$DEVICE" --inference-block "$block" --scaling-envs $ENVS --scaling-rollouts "$ROLLOUTS" \
            --scaling-rollout "$ROLLOUT" --total-steps 64 --repeats 1 --no-sb3 --plot "$WORK/pong-block-$block.png"
    done
fi

# --- 4. torch.compile: the largest Pong run again with compiled encoders -------------------------------
if needs torch numpy gymnasium ale_py tqdm; then
    n=${ENVS##* }; block=${BLOCKS##* }
    echo "$n $block" > "$RESULTS/compiled.txt"
    run_step pong-compiled 200 "$PY" -m htsrl_aio train --env ALE/Pong-v5 --preset atari-ppo --num-envs "$n" \
        --inference-block "$block" --rollout "$ROLLOUT" --total-steps $(( n * ROLLOUT * (ROLLOUTS + 1) )) \
        --torch-compile all --device "$DEVICE" --logdir "$WORK/pong-compiled" --no-progress --no-tensorboard \
        --checkpoint-every 0
fi

# --- The table ----------------------------------------------------------------------------------------
"$PY" - "$RESULTS" "$WORK" "$(( SECONDS - START ))" << 'EOF'
import json, re, sys
from pathlib import Path

results, work, elapsed = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
machine = json.loads((results / "machine.json").read_text())
envs, blocks = (results / "envs.txt").read_text().split(), (results / "blocks.txt").read_text().split()
RECORD = re.compile(r"^\s+(\w+)/(.+?): (\{.*\})$")


def status(step):
    path = results / f"{step}.status"
    return path.read_text().strip() if path.exists() else "not run: " + (
        f"missing {' '.join(machine['missing'])}" if machine["missing"] else "skipped")


def records(step):
    path = results / f"{step}.log"
    found = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        if m := RECORD.match(line):
            found[m[2]] = json.loads(m[3])
    return found


def compare(a, b):
    """As `htsrl-aio diff`: the first update whose actions differ, else whether the final parameters do."""
    runs = [work / step for step in (a, b)]
    actions = [[json.loads(line)["actions_sha256"] for line in (run / "metrics.jsonl").open()] for run in runs]
    params = [json.loads((run / "summary.json").read_text())["final_params_sha256"] for run in runs]
    for update, (x, y) in enumerate(zip(*actions), 1):
        if x != y:
            return f"differ: actions from update {update} of {len(actions[0])}"
    if params[0] != params[1]:
        return f"differ: same actions for {len(actions[0])} updates, different final parameters"
    return f"identical: {len(actions[0])} updates of actions and the final parameters agree"


rows = []
device = machine["device"]
where = machine["gpu"] if device == "cuda" else "the CPU (no GPU)"
for env, name in (("cartpole", "CartPole PPO"), ("pong", "Pong PPO (atari-ppo)")):
    for other, what in (("device-b", f"on {where}, run twice"), ("cpu", f"on {where} vs on the CPU")):
        if other == "cpu" and device == "cpu":
            continue
        steps = [f"bits-{env}-device-a", f"bits-{env}-{other}"]
        failed = [f"{s}: {status(s)}" for s in steps if status(s) != "ok"]
        rows.append({"check": f"bits: {name} {what}", "result": "; ".join(failed) or compare(*steps)})
raw = {}
for n in envs:
    found = records(f"raw-{n}").get("raw AtariVectorEnv")
    raw[n] = found and found["steady_sps"]
    rows.append({"check": f"raw ale-py, {n} envs, {machine['cores']} cores",
                 "result": f"{raw[n]:,.0f} steps/s" if raw[n] else status(f"raw-{n}"), "steps_per_s": raw[n]})
for block in blocks:
    found = records(f"pong-block-{block}")
    for n in envs:
        run = found.get(f"hts {n} envs")
        sps = run and run.get("steady_sps")
        share = f" = {sps / raw[n]:.2f} of raw ale-py" if sps and raw[n] else ""
        rows.append({"check": f"Pong hts PPO, {n} envs, inference block {block}, {device}",
                     "result": f"{sps:,.0f} steps/s{share}" if sps else status(f"pong-block-{block}"),
                     "steps_per_s": sps, "of_raw": sps / raw[n] if sps and raw[n] else None})
n, block = (results / "compiled.txt").read_text().split() if (results / "compiled.txt").exists() else ("-", "-")
compiled = None
if status("pong-compiled") == "ok":
    # Past the first update, which waits for the compilation (one rollout more than the eager runs').
    logged = [json.loads(line) for line in (work / "pong-compiled" / "metrics.jsonl").open()][1:]
    if len(logged) >= 2:
        compiled = ((logged[-1]["global_step"] - logged[0]["global_step"])
                    / (logged[-1]["wall_time_s"] - logged[0]["wall_time_s"]))
eager = (records(f"pong-block-{block}").get(f"hts {n} envs") or {}).get("steady_sps")
share = f" = {compiled / eager:.2f} of eager" if compiled and eager else ""
rows.append({"check": f"Pong hts PPO, {n} envs, inference block {block}, --torch-compile all, {device}",
             "result": f"{compiled:,.0f} steps/s{share}" if compiled else status("pong-compiled"),
             "steps_per_s": compiled, "of_eager": compiled / eager if compiled and eager else None})
rows.append({"check": "CUDA graphs", "result": "not available (htsrl-aio has no such option)"})

print(f"\ngpu-check ({machine['mode']}), {elapsed}s: {machine['cores']} cores ({machine['cpu']}), GPU "
      f"{machine['gpu']}, device {device}; python {machine['python_version']}, torch {machine['torch']}, "
      f"gymnasium {machine['gymnasium']}, ale-py {machine['ale_py']}")
if machine["missing"]:
    print(f"missing: {' '.join(machine['missing'])} ({machine['pip']})")
width = max(len(r["check"]) for r in rows)
print(f"{'check':<{width}}  result")
for row in rows:
    print(f"{row['check']:<{width}}  {row['result']}")
(results / "gpu-check.json").write_text(json.dumps({"machine": machine, "seconds": elapsed, "rows": rows},
                                                   indent=1))
print(f"\nresults: {results / 'gpu-check.json'} (logs beside it)")
EOF
