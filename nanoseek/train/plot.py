"""`nanoseek plot DIR`: PNG plots of a run's metrics.jsonl, drawn with matplotlib's file-only Agg backend.

- loss.png: training loss (main next-token and MTP cross-entropy) and the validation losses, over steps;
- lr.png: the learning-rate schedule;
- expert_load.png: per MoE layer, a heat map of each expert's share of the routed tokens over steps (V3 §2.1.2:
  auxiliary-loss-free balancing should pull every row towards 1 / n_experts), with max/mean load above it;
- throughput.png: tokens/s and MFU over steps;
- GRPO runs: reward.png (the total reward and each reward function's mean per rollout, with accuracy and format
  rate), length.png (mean completion length, held-out response length, and the share cut at max_new_tokens; R1
  Fig. 3), policy.png (KL to the reference, entropy, clipped fraction), heldout.png (held-out greedy accuracy over
  steps, R1 Fig. 2, with pass@1 and pass@k at the start and the end), behaviour.png (the shares of completions with a
  self-check and with a correction, R1 §2.2.4) and, with a curriculum, levels.png (each task's level and the
  running pass rate).
"""
from __future__ import annotations

import os
from pathlib import Path

from nanoseek.errors import DataError
from nanoseek.train.metrics import read_metrics
from nanoseek.train.run_folder import METRICS


def plot_run(run: str | Path) -> list[Path]:
    """Write the plots into `run` (atomically, each through a temporary file); returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    run = Path(run)
    records = [r for r in read_metrics(run / METRICS) if "step" in r]
    if not records:
        raise DataError(f"{run / METRICS} has no step records to plot")
    written = []

    def series(key: str) -> tuple[list[int], list[float]]:
        pairs = [(r["step"], r[key]) for r in records if r.get(key) is not None]
        return [s for s, _ in pairs], [v for _, v in pairs]

    def save(fig, name: str) -> None:
        path = run / name
        tmp = run / f".{name}.tmp.png"
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        plt.close(fig)
        os.replace(tmp, path)
        written.append(path)

    losses = [(key, label) for key, label in (("main_loss", "train (next token)"),
                                              ("mtp_loss", "train (MTP, token after next)"),
                                              ("val_loss", "validation"), ("val_mtp_loss", "validation (MTP)"))
              if series(key)[1]]
    if losses:
        fig, ax = plt.subplots(figsize=(7, 4))
        for key, label in losses:
            ax.plot(*series(key), label=label, marker="o" if key.startswith("val") else None, markersize=3)
        ax.set(xlabel="step", ylabel="cross-entropy (nats)", title=f"loss: {run.name}")
        ax.grid(alpha=0.3)
        ax.legend()
        save(fig, "loss.png")

    if series("reward")[1]:
        _grpo_plots(run, records, series, save, plt)

    fig, ax = plt.subplots(figsize=(7, 3))
    ax.plot(*series("lr"))
    ax.set(xlabel="step", ylabel="learning rate", title=f"schedule: {run.name}")
    ax.grid(alpha=0.3)
    save(fig, "lr.png")

    loads = [(r["step"], r["expert_tokens"]) for r in records if r.get("expert_tokens")]
    if loads:
        steps = [s for s, _ in loads]
        counts = np.array([c for _, c in loads], dtype=float)               # (steps, layers, experts)
        shares = counts / np.maximum(counts.sum(-1, keepdims=True), 1)
        layers = shares.shape[1]
        fig, axes = plt.subplots(layers + 1, 1, figsize=(8, 1.6 * (layers + 1) + 1), sharex=True,
                                 gridspec_kw={"height_ratios": [1.5] + [1] * layers})
        ratios = np.array([r["expert_load"] for r in records if r.get("expert_tokens")])
        for layer in range(layers):
            axes[0].plot(steps, ratios[:, layer], label=f"MoE layer {layer + 1}")
        axes[0].axhline(1.0, color="gray", linestyle="--", linewidth=0.8)
        axes[0].set(ylabel="max / mean", title=f"expert load: {run.name}")
        axes[0].legend(fontsize=7, ncol=layers)
        for layer in range(layers):
            ax = axes[layer + 1]
            image = ax.imshow(shares[:, layer].T, aspect="auto", interpolation="nearest", cmap="viridis",
                              extent=(steps[0] - 0.5, steps[-1] + 0.5, shares.shape[2] - 0.5, -0.5), vmin=0)
            ax.set_ylabel(f"layer {layer + 1}\nexpert")
            fig.colorbar(image, ax=ax, pad=0.01, label="share")
        axes[-1].set_xlabel("step")
        save(fig, "expert_load.png")

    steps, tps = series("tokens_per_s")
    if tps:
        fig, ax = plt.subplots(figsize=(7, 3))
        ax.plot(steps, tps, color="tab:blue")
        ax.set(xlabel="step", ylabel="tokens / s", title=f"throughput: {run.name}")
        twin = ax.twinx()
        twin.plot(*series("mfu"), color="tab:orange", alpha=0.6)
        twin.set_ylabel("MFU (of measured matmul peak)")
        save(fig, "throughput.png")
    return written


def _grpo_plots(run: Path, records: list[dict], series, save, plt) -> None:
    """reward.png, length.png and policy.png of a GRPO run (see the module docstring)."""
    import numpy as np

    fig, (ax, rates) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    steps, reward = series("reward")
    spread = np.array(series("reward_std")[1])
    ax.plot(steps, reward, label="total", color="black")
    if len(spread) == len(reward):
        ax.fill_between(steps, np.array(reward) - spread, np.array(reward) + spread, color="gray", alpha=0.2)
    names = sorted({k[len("reward_"):] for r in records for k in r
                    if k.startswith("reward_") and not k.endswith("_std") and k != "reward_errors"})
    for name in names:
        ax.plot(*series(f"reward_{name}"), label=name, alpha=0.8)
    ax.set(ylabel="mean reward per rollout", title=f"reward: {run.name}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    for key, label in (("accuracy", "accuracy (verifier)"), ("format_rate", "format rate")):
        rates.plot(*series(key), label=label)
    rates.set(xlabel="step", ylabel="share of completions", ylim=(-0.02, 1.02))
    rates.grid(alpha=0.3)
    rates.legend(fontsize=8)
    save(fig, "reward.png")

    fig, ax = plt.subplots(figsize=(7, 3))
    ax.plot(*series("completion_len"), color="tab:blue", label="rollouts (sampled)")
    if series("heldout_length")[1]:
        ax.plot(*series("heldout_length"), color="tab:green", marker="o", markersize=3, label="held-out (greedy)")
        ax.legend(fontsize=8, loc="upper left")
    ax.set(xlabel="step", ylabel="mean completion length (tokens)", title=f"length: {run.name}")
    ax.grid(alpha=0.3)
    twin = ax.twinx()
    twin.plot(*series("truncated"), color="tab:red", alpha=0.5)
    twin.set_ylabel("share cut at max_new_tokens", color="tab:red")
    save(fig, "length.png")

    fig, axes = plt.subplots(3, 1, figsize=(7, 6), sharex=True)
    for ax, (key, label) in zip(axes, (("kl", "KL to reference"), ("entropy", "entropy (nats)"),
                                       ("clip_frac", "clipped fraction"))):
        ax.plot(*series(key))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_title(f"policy: {run.name}")
    axes[-1].set_xlabel("step")
    save(fig, "policy.png")

    if series("heldout_accuracy")[1]:
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(*series("heldout_accuracy"), marker="o", markersize=3, color="tab:green", label="held-out, greedy")
        ax.plot(*series("accuracy"), color="tab:blue", alpha=0.4, label="rollouts, sampled")
        passes = sorted({k for r in records for k in r if k.startswith("heldout_pass@")})
        for key, marker in zip(passes, "sD^v"):
            ax.plot(*series(key), linestyle="none", marker=marker, markersize=7, label=key.removeprefix("heldout_"))
        ax.set(xlabel="step", ylabel="accuracy", ylim=(-0.02, 1.02), title=f"held-out accuracy: {run.name}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        save(fig, "heldout.png")

    if series("self_check")[1]:
        fig, ax = plt.subplots(figsize=(7, 3))
        for key, label, color in (("self_check", "self-check (rollouts)", "tab:purple"),
                                  ("correction", "correction (rollouts)", "tab:orange"),
                                  ("heldout_self_check", "self-check (held-out)", "tab:purple"),
                                  ("heldout_correction", "correction (held-out)", "tab:orange")):
            held = key.startswith("heldout")
            ax.plot(*series(key), label=label, color=color, linestyle="--" if held else "-",
                    marker="o" if held else None, markersize=3)
        ax.set(xlabel="step", ylabel="share of completions", title=f"self-verification and reflection: {run.name}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        save(fig, "behaviour.png")

    levelled = [r for r in records if r.get("levels")]
    if levelled:
        fig, (ax, rates) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
        for task in levelled[0]["levels"]:
            steps = [r["step"] for r in levelled]
            ax.step(steps, [r["levels"][task] for r in levelled], where="post", label=task)
            pairs = [(r["step"], r["pass_rate"][task]) for r in levelled if r["pass_rate"].get(task) is not None]
            rates.plot([s for s, _ in pairs], [v for _, v in pairs], label=task)
        levels = [v for r in levelled for v in r["levels"].values()]
        ax.set(ylabel="level", title=f"curriculum: {run.name}", ylim=(min(levels) - 0.5, max(levels) + 0.5),
               yticks=range(min(levels), max(levels) + 1))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        rates.set(xlabel="step", ylabel="running pass rate", ylim=(-0.02, 1.02))
        rates.grid(alpha=0.3)
        save(fig, "levels.png")
