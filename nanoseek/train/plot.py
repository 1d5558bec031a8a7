"""`nanoseek plot DIR`: PNG plots of a run's metrics.jsonl, drawn with matplotlib's file-only Agg backend.

- loss.png: training loss (main next-token and MTP cross-entropy) and the validation losses, over steps;
- lr.png: the learning-rate schedule;
- expert_load.png: per MoE layer that routed tokens (an MTP module the loss does not train routes none, and is left
  out), a heat map of each expert's share of the routed tokens over steps (V3 §2.1.2: auxiliary-loss-free balancing
  should pull every row towards 1 / n_experts), with max/mean load above it;
- throughput.png: tokens/s and, below it, MFU over steps;
- GRPO runs: reward.png (the total reward, its spread, and each reward function's mean per completion; the accuracy
  and format rates below it only when no reward already draws them), length.png (mean completion length, held-out
  response length, and the share cut at max_new_tokens; R1 Fig. 3), policy.png (KL to the reference, entropy, and
  with μ > 1 the clipped fraction), heldout.png (held-out greedy accuracy over
  steps, R1 Fig. 2, with pass@1 and pass@k at the start and the end), behaviour.png (the shares of completions with a
  self-check and with a correction, R1 §2.2.4) and, with a curriculum, levels.png (each task's level and the
  running pass rate).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from nanoseek.errors import DataError
from nanoseek.train.metrics import read_metrics
from nanoseek.train.run_folder import METRICS, RUN


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
    counts = np.array([c for _, c in loads], dtype=float)                   # (steps, layers, experts)
    kept = [i for i in range(counts.shape[1]) if counts[:, i].sum() > 0] if loads else []  # an idle MTP module: none
    if kept:
        steps = [s for s, _ in loads]
        names = layer_names(counts.shape[1], run)
        shares = counts / np.maximum(counts.sum(-1, keepdims=True), 1)
        ratios = np.array([r["expert_load"] for r in records if r.get("expert_tokens")])
        fig, axes = plt.subplots(len(kept) + 1, 1, figsize=(8, 1.6 * (len(kept) + 1) + 1), sharex=True,
                                 gridspec_kw={"height_ratios": [1.5] + [1] * len(kept)})
        for layer in kept:
            axes[0].plot(steps, ratios[:, layer], label=names[layer])
        axes[0].axhline(1.0, color="gray", linestyle="--", linewidth=0.8)
        axes[0].set(ylabel="max / mean", title=f"expert load: {run.name}")
        axes[0].legend(fontsize=7, ncol=max(1, len(kept)))
        for ax, layer in zip(axes[1:], kept):
            image = ax.imshow(shares[:, layer].T, aspect="auto", interpolation="nearest", cmap="viridis",
                              extent=(steps[0] - 0.5, steps[-1] + 0.5, shares.shape[2] - 0.5, -0.5), vmin=0)
            ax.set_ylabel(f"{names[layer]}\nexpert")
            fig.colorbar(image, ax=ax, pad=0.01, label="share")
        axes[-1].set_xlabel("step")
        save(fig, "expert_load.png")

    steps, tps = series("tokens_per_s")
    if tps:  # two panels: tokens/s and MFU each on an axis of its own
        fig, (ax, util) = plt.subplots(2, 1, figsize=(7, 4.5), sharex=True)
        ax.plot(steps, tps, color="tab:blue")
        ax.set(ylabel="tokens / s", title=f"throughput: {run.name}")
        ax.grid(alpha=0.3)
        util.plot(*series("mfu"), color="tab:orange")
        util.axhline(1.0, color="gray", linestyle="--", linewidth=0.8)
        util.set(xlabel="step", ylabel="MFU (of the measured\nmatmul peak)")
        util.grid(alpha=0.3)
        save(fig, "throughput.png")
    return written


def layer_names(n: int, run: Path) -> list[str]:
    """The names of the n MoE layers whose loads a run logs, the main model's first, then the MTP modules' (their
    numbers from the run's config.json; without it, all numbered as layers)."""
    from nanoseek.checkpoint import CONFIG

    main = n
    if (run / CONFIG).is_file():
        config = json.loads((run / CONFIG).read_text())
        main = min(n, config.get("num_hidden_layers", n) - config.get("first_k_dense_replace", 0))
    return [f"MoE layer {i + 1}" for i in range(main)] + [f"MTP module {i + 1}" for i in range(n - main)]


def _updates_per_rollout(run: Path) -> int | None:
    """GRPO's μ from the run's settings (run.json), None without them."""
    try:
        settings = json.loads((run / RUN).read_text())
        return int(settings["grpo"]["mu"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _grpo_plots(run: Path, records: list[dict], series, save, plt) -> None:
    """reward.png, length.png and policy.png of a GRPO run (see the module docstring)."""
    import numpy as np

    names = sorted({k[len("reward_"):] for r in records for k in r
                    if k.startswith("reward_") and not k.endswith("_std") and k != "reward_errors"})
    # the accuracy and format rates are the means of the accuracy and format rewards: drawn once, as rewards
    rates = [(key, label) for key, label, reward in (("accuracy", "accuracy (verifier)", "accuracy"),
                                                     ("format_rate", "format rate", "format"))
             if reward not in names and series(key)[1]]
    fig, axes = plt.subplots(1 + bool(rates), 1, figsize=(7, 6 if rates else 4), sharex=True, squeeze=False)
    ax = axes[0][0]
    steps, reward = series("reward")
    spread = np.array(series("reward_std")[1])
    ax.plot(steps, reward, label="total", color="black")
    if len(spread) == len(reward):
        ax.fill_between(steps, np.array(reward) - spread, np.array(reward) + spread, color="gray", alpha=0.2,
                        label="total ± 1 std over the step's completions")
    for name in names:
        ax.plot(*series(f"reward_{name}"), label=f"{name} reward", alpha=0.8)
    ax.set(ylabel="mean reward per completion", title=f"reward: {run.name}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if rates:
        for key, label in rates:
            axes[1][0].plot(*series(key), label=label)
        axes[1][0].set(ylabel="share of completions", ylim=(-0.02, 1.02))
        axes[1][0].grid(alpha=0.3)
        axes[1][0].legend(fontsize=8)
    axes[-1][0].set_xlabel("step")
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

    panels = [("kl", "KL to reference"), ("entropy", "entropy (nats)")]
    if (_updates_per_rollout(run) or 2) > 1:  # with one update per rollout the ratio is 1: nothing is ever clipped
        panels.append(("clip_frac", "clipped fraction"))
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2 * len(panels)), sharex=True)
    for ax, (key, label) in zip(axes, panels):
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
