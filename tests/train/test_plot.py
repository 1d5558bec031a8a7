"""train/plot.py: what each figure draws, read from the figures themselves on a metrics.jsonl written here."""
import json
from pathlib import Path

import matplotlib.figure
import pytest

from nanoseek.train.plot import plot_run

STEPS = range(1, 6)


def write_run(folder, mu=None, mtp_idle=True, rewards=("accuracy", "format")):
    """A GRPO-shaped metrics.jsonl: 2 MoE layers and an MTP module (routing nothing when idle), the rewards named."""
    folder.mkdir()
    rows = []
    for step in STEPS:
        row = {"step": step, "loss": 1.0 / step, "lr": 1e-3, "tokens_per_s": 100.0 + step, "mfu": 0.1 * step,
               "expert_tokens": [[step, 2, 3, 4], [4, 3, 2, step], [0, 0, 0, 0] if mtp_idle else [1, 1, 1, step]],
               "expert_load": [1.2, 1.3, 0.0 if mtp_idle else 1.1],
               "reward": 0.5, "reward_std": 0.1, "accuracy": 0.2 * step / 5, "format_rate": 0.9,
               "kl": 0.0, "entropy": 1.0, "clip_frac": 0.0, "completion_len": 20, "truncated": 0.0}
        for name in rewards:
            row[f"reward_{name}"] = row["accuracy" if name == "accuracy" else "format_rate"]
            row[f"reward_{name}_std"] = 0.1
        rows.append(row)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "config.json").write_text(json.dumps({"num_hidden_layers": 3, "first_k_dense_replace": 1}))
    if mu is not None:
        (folder / "run.json").write_text(json.dumps({"stage": "grpo", "grpo": {"mu": mu}}))
    return folder


@pytest.fixture
def figures(monkeypatch):
    """Every figure plot_run saves, by file name."""
    saved = {}
    original = matplotlib.figure.Figure.savefig

    def spy(fig, path, *args, **kwargs):
        saved[Path(path).name.removeprefix(".").removesuffix(".tmp.png")] = fig
        return original(fig, path, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    return saved


def panels(fig):
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def lines(ax):
    return [(tuple(line.get_xdata()), tuple(line.get_ydata())) for line in ax.get_lines()
            if len(line.get_xdata()) > 1]


def test_expert_load_leaves_out_the_idle_mtp_module_and_names_the_layers(tmp_path, figures):
    plot_run(write_run(tmp_path / "run"))
    fig = figures["expert_load.png"]
    labels = [t.get_text() for t in panels(fig)[0].get_legend().get_texts()]
    assert labels == ["MoE layer 1", "MoE layer 2"]
    plot_run(write_run(tmp_path / "trained", mtp_idle=False))
    labels = [t.get_text() for t in panels(figures["expert_load.png"])[0].get_legend().get_texts()]
    assert labels == ["MoE layer 1", "MoE layer 2", "MTP module 1"]


def test_mfu_has_an_axis_of_its_own(tmp_path, figures):
    plot_run(write_run(tmp_path / "run"))
    axes = panels(figures["throughput.png"])
    positions = {tuple(round(v, 3) for v in ax.get_position().bounds) for ax in axes}
    assert len(axes) == len(positions) == 2  # not one axis drawn over the other
    assert "tokens" in axes[0].get_ylabel() and "MFU" in axes[1].get_ylabel()


def test_reward_figure_draws_each_curve_once_and_labels_its_band(tmp_path, figures):
    plot_run(write_run(tmp_path / "run"))
    drawn = [line for ax in panels(figures["reward.png"]) for line in lines(ax)]
    assert len(drawn) == len(set(drawn))
    legend = [t.get_text() for ax in panels(figures["reward.png"]) for t in ax.get_legend().get_texts()]
    assert any("std" in label for label in legend)
    plot_run(write_run(tmp_path / "format-only", rewards=("format",)))   # accuracy has no reward curve: its rate
    assert len(panels(figures["reward.png"])) == 2


@pytest.mark.parametrize("mu, clipped", [(1, False), (2, True)])
def test_the_clipped_fraction_is_drawn_only_when_there_are_several_updates_per_rollout(tmp_path, figures, mu,
                                                                                       clipped):
    plot_run(write_run(tmp_path / "run", mu=mu))
    labels = [ax.get_ylabel() for ax in panels(figures["policy.png"])]
    assert ("clipped fraction" in labels) == clipped
