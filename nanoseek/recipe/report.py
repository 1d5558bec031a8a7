"""The recipe's report: OUT/report.json (every stage's record) and OUT/report.md (a table of the stages, the RL
stages at their two ends as R1 Table 2 has them, and each stage's plots)."""
from __future__ import annotations

import json
from pathlib import Path

from nanoseek.atomic import write_atomic
from nanoseek.cost import utilisation
from nanoseek.recipe.stages import Recipe
from nanoseek.train.rejection import rejected
from nanoseek.train.run_folder import REPORT, REPORT_JSON


def peaks(records: list[dict], peak: float) -> str:
    """The measured peaks the records' MFUs are against: one, unless stages were trained in different sessions."""
    found = sorted({r.get("peak_flops", peak) for r in records} or {peak})
    return " / ".join(f"{p / 1e9:.1f}" for p in found) + " GFLOP/s"


def write_report(out: Path, recipe: Recipe, by_name: dict[str, dict], peak: float, device: str) -> None:
    """OUT/report.json and OUT/report.md from the stage records so far (`by_name`); MFU is against `device`'s
    measured matmul `peak`."""
    records = [by_name[s.name] for s in recipe.stages if s.name in by_name]
    write_atomic(out / REPORT_JSON, json.dumps({"stages": records}, indent=1) + "\n")
    total = sum(r["seconds"] + r["eval_seconds"] for r in records)
    lines = ["# The R1 recipe, end to end", "",
             f"Held-out evaluation: the same {recipe.eval_problems} eval-split problems for every stage, greedy "
             f"decoding, at most {recipe.eval_max_new_tokens} new tokens. FLOPs: 6 N per trained token and 2 N "
             f"per generated one (`nanoseek.cost`); MFU against {device}'s float32 matmul peak measured "
             f"once in the session that trained the stage ({peaks(records, peak)}); one device. Prompts: "
             + "; ".join(f"{r['name']} {r['eval_prompt']}" for r in records if r.get("eval_prompt") != "chat template")
             + "; the others the chat template.", "",
             "| stage | from | accuracy | format rate | mean length | wall time | tokens processed | FLOPs | MFU "
             "| device-hours |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in records:
        lines.append(f"| {r['name']} | {r['init'] or '-'} | {r['accuracy']:.1%} | {r['format_rate']:.1%} "
                     f"| {r['mean_length']:.0f} | {r['seconds'] / 60:.1f} min | {r['tokens']:,} "
                     f"| {r['flops']:.2e} | {utilisation(r['mfu'])} | {r['device_hours']:.3f} |")
    lines += ["", f"Total wall time, evaluations included: {total / 60:.1f} min. Each stage's time, tokens, FLOPs and "
              "MFU are its training loop's, as in its own report.md; those of rejection-sft and distill add the "
              "sampling before their fine-tuning, which their report.md leaves out.", ""]
    for r in records:
        if "train_reward_first" in r and r["train_reward_first"] is not None:
            lines.append(f"- {r['name']}: training reward {r['train_reward_first']:.3f} → "
                         f"{r['train_reward_last']:.3f}, "
                         f"rollout accuracy {r['train_accuracy_first']:.1%} → {r['train_accuracy_last']:.1%} "
                         f"(first and last fifth of the rollouts)")
        if "rejection" in r:
            c = r["rejection"]
            lines.append(f"- {r['name']}: rejection sampling kept {c['kept']} of {c['samples']} completions "
                         f"({c['questions_solved']} of {c['questions']} questions); rejected: {rejected(c)}")
        teacher = by_name.get(r["init"])
        if "parameters" in r:
            share = f"; {r['accuracy'] / teacher['accuracy']:.0%} of its accuracy" if teacher["accuracy"] else ""
            lines.append(f"- {r['name']}: a dense student of {r['parameters']:,} parameters (from {r['student']}), "
                         f"{r['parameters'] / r['teacher_parameters']:.2f}x {r['init']}'s {r['teacher_parameters']:,}"
                         f"{share}")
        if "weight_bytes" in r:
            rounding = f"GPTQ on {r['calibration']} training problems, " if "calibration" in r else ""
            lines.append(f"- {r['name']}: {rounding}{r['weight_bytes'] / 2**20:.2f} MiB of weights on disk, "
                         f"{r['weight_bytes'] / r['init_weight_bytes']:.2f}x {r['init']}'s (float32, embeddings and "
                         f"norms included); accuracy {100 * (r['accuracy'] - teacher['accuracy']):+.1f} points")
    lines.append("")
    lines += rl_table(records)
    for r in records:
        plots = stage_plots(Path(r["checkpoint"]))
        if plots:
            lines += [f"## {r['name']}", "", *(f"![{r['name']} {p[:-4]}]({r['name']}/{p})" for p in plots), ""]
    write_atomic(out / REPORT, "\n".join(lines))


# the plots a stage's folder holds (train/plot.py), the RL stages' own first; any other PNG there after them
PLOTS = ("heldout.png", "length.png", "behaviour.png", "reward.png", "levels.png", "policy.png", "loss.png",
         "lr.png", "expert_load.png", "throughput.png")


def stage_plots(folder: Path) -> list[str]:
    """Every plot in a stage's folder, in the order the report shows them."""
    found = {p.name for p in folder.glob("*.png")}
    return [p for p in PLOTS if p in found] + sorted(found - set(PLOTS))


def rl_table(records: list[dict]) -> list[str]:
    """R1 Table 2 and Figs. 2-3 in miniature: each RL stage at the start and the end of its training, on the same
    held-out problems (GRPOConfig.heldout of them, each stage in its own prompt), greedy accuracy, pass@1 and pass@k
    of samples at the rollout temperature, mean response length, format rate and the share of responses with a
    self-check; R1-Zero's curves are its heldout.png and length.png below."""
    rl = [r for r in records if r.get("heldout_start")]
    if not rl:
        return []
    k = next((key.split("@")[1] for key in rl[0]["heldout_start"] if key.startswith("heldout_pass@")
              and key != "heldout_pass@1"), None)
    lines = ["## The RL stages on held-out problems (R1 Table 2, Figs. 2-3)", "",
             "Each RL stage at its first and last step, on the same held-out problems (greedy, and "
             f"{'pass@1 / pass@' + k + ' of samples at the rollout temperature' if k else 'no sampling'}); "
             "R1-Zero's first row is the base model under R1-Zero's template.", "",
             f"| stage | step | accuracy | pass@1 | pass@{k or 'k'} | mean length | format rate | with a self-check "
             f"| with a correction |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]

    def cell(figures: dict, key: str, unit: str = "%") -> str:
        value = figures.get(key)
        return "-" if value is None else f"{value:.1%}" if unit == "%" else f"{value:.0f}"

    for r in rl:
        for when, figures in (("start", r["heldout_start"]), ("end", r.get("heldout_end", {}))):
            lines.append(f"| {r['name']} | {when} | {cell(figures, 'heldout_accuracy')} "
                         f"| {cell(figures, 'heldout_pass@1')} | {cell(figures, f'heldout_pass@{k}')} "
                         f"| {cell(figures, 'heldout_length', 'tokens')} | {cell(figures, 'heldout_format_rate')} "
                         f"| {cell(figures, 'heldout_self_check')} | {cell(figures, 'heldout_correction')} |")
    return lines + [""]
