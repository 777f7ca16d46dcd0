"""The CI version of the learning suite (benchmarks/suite.py --smoke): CartPole-v1 PPO, three seeds, hts
and sync, through the suite's own runner and report. It asserts learning, not parity: three seeds
cannot tell hts from sync (docs/learning.md has the ten-seed suite that does)."""

import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import suite

# Several times CartPole-v1's random-policy return (23.7); the smoke budget's seeds end at 250-500.
LEARNED_RETURN = 150


@pytest.mark.slow
def test_smoke_suite_learns_and_reports(tmp_path, no_leaks):
    cells = suite.plan_cells(suite.SUITES["smoke"], envs=None, algos=None, modes=list(suite.MODES),
                             seeds=None, total_steps=None)
    suite.run_cells(cells, tmp_path, jobs=1, workers=1, train_args=[])
    result = suite.report(tmp_path, tmp_path / "plots", reps=200)

    (row,) = result["per_env"]
    for mode in suite.MODES:
        assert row[mode]["seeds"] == 3, row
        assert row[mode]["mean"] >= LEARNED_RETURN, row
        low, iqm, high = row["raw"][mode][1], row["raw"][mode][0], row["raw"][mode][2]
        assert low <= iqm <= high
        # every cell's final policy was also played greedily, as the SB3 zoo's references are
        assert len(row[mode]["eval_returns"]) == 3 and row[mode]["eval_mean"] >= LEARNED_RETURN, row
    (aggregate,) = result["aggregate"]
    for mode in suite.MODES:
        profile = aggregate["profiles"][mode]["fraction"]
        assert all(a >= b for a, b in itertools.pairwise(profile)), profile  # a survival curve
        above_random = np.mean(np.array(row[mode]["final_returns"]) > suite.RANDOM_RETURNS["CartPole-v1"])
        assert profile[0] == pytest.approx(above_random)  # tau 0 is the random policy's return
    for png in ("learning-CartPole-v1.png", "learning-profiles.png"):
        assert (tmp_path / "plots" / png).stat().st_size > 0
    assert json.loads((tmp_path / "report.json").read_text())["per_env"][0]["env"] == "CartPole-v1"


def test_finished_cells_are_skipped_and_held_cells_left_alone(tmp_path):
    cell = suite.Cell("CartPole-v1", "ppo", "hts", 1, 1000)
    run_dir = cell.run_dir(tmp_path)
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text("{}")
    # finished before cells were evaluated, and with no checkpoint to evaluate: said, not raised
    assert "finished already; not evaluated: " in suite.run_cell(cell, tmp_path, workers=1, train_args=[])
    (run_dir / suite.EVAL_FILE).write_text("{}")
    assert suite.run_cell(cell, tmp_path, workers=1, train_args=[]).endswith("finished already")

    other = suite.Cell("CartPole-v1", "ppo", "sync", 1, 1000)
    with suite.cell_lock(other.run_dir(tmp_path)) as held:
        assert held
        assert suite.run_cell(other, tmp_path, workers=1, train_args=[]).endswith("is running it")
    assert not other.run_dir(tmp_path).with_name("ppo-sync-s1.lock").exists()


def test_a_dead_process_lock_is_taken_over(tmp_path):
    run_dir = tmp_path / "env" / "ppo-hts-s1"
    run_dir.parent.mkdir(parents=True)
    dead_pid = 2**22 + 1  # above the default pid_max, so no process has it
    run_dir.with_name("ppo-hts-s1.lock").write_text(f"{suite.socket.gethostname()} {dead_pid}")
    with suite.cell_lock(run_dir) as held:
        assert held


def test_cells_take_the_per_algorithm_budget_and_preset_unless_overridden():
    plans = (suite.EnvPlan("LunarLander-v3", 1_000_000, (1,), presets={"a2c": "box2d-a2c"},
                           budgets={"a2c": 200_000}),)
    cells = suite.plan_cells(plans, envs=None, algos=None, modes=["hts"], seeds=None, total_steps=None)
    assert [(c.algo, c.total_steps, c.preset) for c in cells] == [("ppo", 1_000_000, None),
                                                                    ("a2c", 200_000, "box2d-a2c")]
    cells = suite.plan_cells(plans, envs=None, algos=["a2c"], modes=["hts"], seeds=[2], total_steps=5000)
    assert [(c.algo, c.seed, c.total_steps) for c in cells] == [("a2c", 2, 5000)]


def test_no_eval_leaves_the_evaluation_to_a_later_run(tmp_path):
    cell = suite.Cell("CartPole-v1", "ppo", "hts", 1, 1024)
    line = suite.run_cell(cell, tmp_path, workers=1, train_args=[], evaluate=False)
    assert line.endswith("not evaluated (--no-eval)")
    run_dir = cell.run_dir(tmp_path)
    assert (run_dir / "summary.json").is_file() and not (run_dir / suite.EVAL_FILE).exists()
    again = suite.run_cell(cell, tmp_path, workers=1, train_args=[], evaluate=False)
    assert again.endswith("finished already")
    assert "finished already; deterministic eval " in suite.run_cell(cell, tmp_path, workers=1, train_args=[])
    assert json.loads((run_dir / suite.EVAL_FILE).read_text())["episodes"] == suite.EVAL_EPISODES
