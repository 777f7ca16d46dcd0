"""--env-backend ray: the same bits as worker processes whatever the actors or nodes, a dead actor is a dead
worker (stop in one sentence, or start it again), no answer within --env-timeout is a failure, and a run
that started its own Ray instance leaves no Ray process behind."""

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import envs_for_tests_importable
from harness import HANG_S, alive, terminal_signals, wait_until

from htsrl_aio import EnvError, TrainConfig, Trainer, train
from htsrl_aio.cli import main as cli_main

ray = pytest.importorskip("ray", reason='Ray is not installed (pip install -e ".[ray]")')
pytestmark = pytest.mark.ray

NUM_ENVS, ROLLOUT, UPDATES = 6, 16, 4


def config(run_dir: Path, **overrides) -> TrainConfig:
    base = {"env": "CartPole-v1", "num_envs": NUM_ENVS, "rollout": ROLLOUT,
            "total_steps": NUM_ENVS * ROLLOUT * UPDATES, "minibatches": 2, "logdir": str(run_dir),
            "progress": False, "env_backend": "ray", "learner": "thread"}
    return TrainConfig(**{**base, **overrides})


def actions_trace(run_dir: Path) -> list[str]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["actions_sha256"] for line in lines]


def ray_processes_on_this_machine() -> set[int]:
    """Pids of every Ray process here (gcs_server, raylet, ray:: workers), whoever started them."""
    found = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"gcs_server" in text or b"raylet" in text or text.startswith(b"ray::"):
            found.add(int(cmdline.parent.name))
    return found


@pytest.mark.usefixtures("ray_instance")
class TestOnOneRayInstance:
    @pytest.mark.slow
    def test_same_bits_as_worker_processes_whatever_the_actors(self, tmp_path):
        runs = {name: train(config(tmp_path / name, **overrides)) for name, overrides in [
            ("processes", {"env_backend": "process", "workers": 2}),
            ("two_actors", {"ray_actors": 2}),
            ("three_actors", {"envs_per_actor": 2, "max_batch": 3}),
        ]}
        assert len({summary["final_params_sha256"] for summary in runs.values()}) == 1, runs
        traces = [actions_trace(tmp_path / name) for name in runs]
        assert len(traces[0]) == UPDATES and traces[0] == traces[1] == traces[2]
        env_runs = json.loads((tmp_path / "three_actors" / "config.json").read_text())["env_runs"]
        assert env_runs == "on 3 Ray actors (1 node)"
        assert ray.is_initialized()  # a run that joined a running instance leaves it running

    async def test_a_killed_actor_stops_the_run_in_one_sentence_naming_its_envs(self, tmp_path):
        with pytest.raises(EnvError) as failed:
            async with Trainer(config(tmp_path / "run", ray_actors=2)) as trainer:
                async for _ in trainer.updates():
                    ray.kill(trainer.backend.actors[1])
        message = str(failed.value)
        assert message.startswith("Ray actor 1 (envs 3-5 of 'CartPole-v1') on node ")
        assert "died unexpectedly" in message
        assert message.endswith("the run cannot continue without its envs.")
        assert "\n" not in message

    async def test_a_killed_actor_is_started_again_with_its_envs(self, tmp_path):
        cfg = config(tmp_path / "run", ray_actors=2, on_env_error="restart")
        async with Trainer(cfg) as trainer:
            async for metrics in trainer.updates():
                if metrics["update"] == 1:
                    ray.kill(trainer.backend.actors[1])
        assert trainer.summary["updates"] == UPDATES
        last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
        assert last["env_restarts"] == 3  # the actor hosted envs 3, 4 and 5: all start again
        assert "Ray actor 1 (envs 3-5 of 'CartPole-v1')" in (tmp_path / "run" / "error.log").read_text()

    def test_no_answer_within_the_timeout_is_an_env_failure(self, tmp_path):
        stopped = (r"^env \d of 'envs_for_tests:hangs_after_40_steps_cartpole' did not answer its step "
                   r"\(rollout \d+, step \d+\) within --env-timeout 2 s, so Ray actor \d "
                   r"\(envs \d-\d of .*\).* was killed; make the env answer sooner")
        with pytest.raises(EnvError, match=stopped):
            train(config(tmp_path / "run", env="envs_for_tests:hangs_after_40_steps_cartpole", env_timeout=2,
                         ray_actors=2))


@pytest.mark.slow
def test_actors_spread_over_the_nodes_of_a_cluster_give_the_same_bits(tmp_path):
    from ray.cluster_utils import Cluster

    reference = train(config(tmp_path / "loop", env_backend="loop", env_timeout=0))
    with envs_for_tests_importable():
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        summary = train(config(tmp_path / "cluster", ray_address=cluster.address, ray_actors=3))
        assert not ray.is_initialized()  # the run disconnected; the cluster is still there
        env_runs = json.loads((tmp_path / "cluster" / "config.json").read_text())["env_runs"]
    finally:
        cluster.shutdown()
    assert summary["final_params_sha256"] == reference["final_params_sha256"]
    assert actions_trace(tmp_path / "cluster") == actions_trace(tmp_path / "loop")
    assert env_runs == "on 3 Ray actors (3 nodes)"


def test_a_run_that_started_ray_leaves_no_ray_process(tmp_path):
    assert not ray.is_initialized()
    before = ray_processes_on_this_machine()
    summary = train(config(tmp_path / "run", ray_actors=2))
    assert summary["updates"] == UPDATES and not ray.is_initialized()
    wait_until(lambda: not ray_processes_on_this_machine() - before, HANG_S, "the run's Ray processes to end")


def test_an_address_where_no_cluster_answers_is_refused_in_one_sentence(tmp_path, capsys):
    assert not ray.is_initialized()  # else the run would use the instance this process already joined
    with pytest.raises(SystemExit) as exited:  # Ray alone retries such an address for about 14 minutes
        cli_main(["train", "--env-backend", "ray", "--ray-address", "127.0.0.1:1", "--no-progress",
                  "--logdir", str(tmp_path / "run")])
    assert exited.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "htsrl-aio: error: --ray-address 127.0.0.1:1: no Ray cluster answers there within 10 s (connection "
        "refused); start the cluster first (`ray start --head` prints its address) or give the address "
        "`ray status` shows on the head node (--ray-address auto on a node of the cluster).")
    assert not ray.is_initialized()


def test_without_ray_installed_the_backend_says_how_to_get_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    with pytest.raises(SystemExit) as exited:
        cli_main(["train", "--env-backend", "ray", "--logdir", str(tmp_path / "run")])
    assert exited.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        'htsrl-aio: error: --env-backend ray needs Ray, which is not installed; install it with pip install '
        '"htsrl-aio[ray]".']
    assert not (tmp_path / "run").exists()


def test_the_core_never_imports_ray():
    code = "import sys, htsrl_aio, htsrl_aio.trainer, htsrl_aio.cli; assert 'ray' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_ray_errors_become_one_line_naming_what_the_actor_raised():
    from htsrl_aio.backends.ray_actors import _first_line

    creation = RuntimeError("The actor died because of an error raised in its creation task, "
                            "\x1b[36mray::ReplicaHost.__init__()\x1b[39m (pid=1)\n  traceback: Traceback "
                            "(most recent call last):\n    ...\n"
                            "ModuleNotFoundError: No module named 'my_envs'\n")
    assert _first_line(creation) == "ModuleNotFoundError: No module named 'my_envs'"
    killed = RuntimeError("The actor died unexpectedly before finishing this task.\n\tclass_name: X")
    assert _first_line(killed) == "RuntimeError: The actor died unexpectedly before finishing this task."


def process_tree(pid: int) -> set[int]:
    """Every process below `pid` now."""
    found, below = set(), [pid]
    while below:
        for children in Path(f"/proc/{below.pop()}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                kids = {int(child) for child in children.read_text().split()} - found
                found |= kids
                below += kids
    return found


def start_ray_run(run: Path, *flags: str) -> tuple[subprocess.Popen, set[int]]:
    """A CLI run on a local Ray instance, in a session of its own, once it has written a metrics row;
    with the processes below it then (its Ray instance among them)."""
    argv = [sys.executable, "-m", "htsrl_aio", "train", "--env-backend", "ray", "--ray-actors", "2",
            "--num-envs", "4", "--total-steps", "100000000", "--learner", "thread", "--no-progress",
            "--logdir", str(run), "--stop-timeout", str(HANG_S), *flags]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=terminal_signals, start_new_session=True)
    metrics = run / "metrics.jsonl"
    wait_until(lambda: proc.poll() is not None or (metrics.exists() and metrics.read_text().count("\n")),
               HANG_S, "a metrics row")
    return proc, process_tree(proc.pid)


def raylet_of(tree: set[int]) -> int:
    return next(pid for pid in tree if b"raylet" in Path(f"/proc/{pid}/cmdline").read_bytes())


def sigterm_reached(pid: int) -> bool:
    """Whether SIGTERM has reached process `pid`: it has exited, or the signal waits, blocked."""
    if not alive(pid):
        return True
    pending = Path(f"/proc/{pid}/status").read_text().split("ShdPnd:\t")[1].split()[0]
    return bool(int(pending, 16) & 1 << (signal.SIGTERM - 1))


@pytest.mark.parametrize("to", ["head", "group"])
def test_sigterm_stops_at_the_swap_and_releases_every_actor_and_the_local_ray_instance(tmp_path, monkeypatch,
                                                                                        to):
    hold = tmp_path / "hold"
    monkeypatch.setenv("HTSRL_TEST_HOLD_MARKER", str(hold))
    proc, tree = start_ray_run(tmp_path / "run", "--env", "envs_for_tests:held_while_marked_cartpole",
                               "--rollout", "16", "--env-timeout", "0")
    try:
        raylet = raylet_of(tree)
        hold.touch()  # the envs wait before their next step, so the swap waits
        if to == "group":  # as `timeout`, Slurm or a closed terminal send it
            os.killpg(proc.pid, signal.SIGTERM)
            # The run goes on to its swap only once the signal has reached its Ray instance.
            wait_until(lambda: sigterm_reached(raylet), HANG_S, "SIGTERM to reach the raylet")
        else:
            proc.terminate()
        hold.unlink()
        _, stderr = proc.communicate(timeout=HANG_S)
    finally:
        proc.kill()
    assert proc.returncode == 143, stderr
    assert "stopped at the swap after update" in stderr
    wait_until(lambda: not list(filter(alive, tree)), HANG_S, "the run's Ray processes to exit")


def test_a_sigkilled_run_leaves_no_process_of_its_local_ray_instance(tmp_path):
    proc, tree = start_ray_run(tmp_path / "run", "--rollout", "16")
    try:
        proc.kill()
        proc.wait()
        # Its GCS and raylet die with it (the kernel kills them); its agents and workers were left before.
        wait_until(lambda: not list(filter(alive, tree)), HANG_S, "the killed run's Ray processes to exit")
    finally:
        for pid in filter(alive, tree):
            os.kill(pid, signal.SIGKILL)
