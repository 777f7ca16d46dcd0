"""`htsrl-aio plot`: several runs on one figure, one line per run in every panel."""

import pytest

from htsrl_aio import ConfigError, TrainConfig, train
from htsrl_aio.cli import main as cli_main
from htsrl_aio.outputs.plot import plot_runs


@pytest.mark.slow
def test_hts_and_sync_runs_on_one_figure(tmp_path, no_leaks):
    runs = []
    for mode in ("hts", "sync"):
        train(TrainConfig(num_envs=4, rollout=16, total_steps=4 * 16 * 4, workers=2, mode=mode,
                          logdir=str(tmp_path / mode), progress=False))
        runs.append(tmp_path / mode)
    fig = plot_runs(runs, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    assert len(fig.axes) == 6 and all(len(ax.get_lines()) == 2 for ax in fig.axes)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["hts (hts ppo)", "sync (sync ppo)"]
    assert list(fig.axes[3].get_lines()[0].get_ydata()) == [0, 1, 1, 1]  # policy lag of the hts run


def test_a_directory_without_metrics_is_one_sentence(tmp_path):
    with pytest.raises(ConfigError, match=r"is not a run directory: it has no metrics\.jsonl"):
        plot_runs([tmp_path], tmp_path / "x.png")
    with pytest.raises(SystemExit) as info:
        cli_main(["plot", str(tmp_path), "-o", str(tmp_path / "x.png")])
    assert info.value.code == 2
