"""Evaluation of a checkpoint on verifiable problems, and of its MTP module on held-out text.

- Accuracy: each response's answer (the text after `</think>`) judged by the task's verifier (`data.verify`).
- Format rate: the share of responses shaped as R1's template asks, `<think>…</think>` then a non-empty answer
  (R1 §2.2.2, the format reward).
- With k samples per problem: pass@k (any sample correct) and maj@k (the most frequent answer correct, the
  self-consistency vote R1 reports as cons@64), plus the mean accuracy over all samples.
- MTP: how often module 1's prediction of the token after next matches the text (V3 §2.2; with greedy verification
  it estimates the acceptance rate of self-speculative decoding, V3 §5.4.3 reports 85-90% for the second token),
  and how often it agrees with the main model's own prediction of that token.

A chat model is prompted with the chat template; a base model with worked problems of the same task in its
pretraining format (`few_shot` > 0), each closed by end-of-sequence, then the question, or with R1-Zero's plain-text
template (`template="r1-zero"`, R1 §2.2.1 Table 1). Responses come from the inference engine
(`nanoseek.infer.Engine`), greedy or sampled: the decoder that serves the model is the one measured.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import torch
from tqdm import tqdm

from nanoseek.checkpoint import load_checkpoint
from nanoseek.checks import check_fields
from nanoseek.data.conversations import read_rows
from nanoseek.data.problem import Problem, parse_number
from nanoseek.data.prompts import PROMPTS, check_template, few_shot_examples, prompt_ids
from nanoseek.data.sources import DIFFICULTY, EVAL_PROBLEMS, eval_problems, heldout_sequences, text_source
from nanoseek.data.styles import has_correction, has_self_check
from nanoseek.data.tasks import TASKS, verify
from nanoseek.errors import ConfigError, DataError
from nanoseek.infer import Engine, EngineConfig, SamplingParams, cache_mb
from nanoseek.model import Transformer
from nanoseek.tokenizer import Tokenizer
from nanoseek.train.default_tokenizer import default_tokenizer
from nanoseek.train.stage import device_of

THINK_THEN_ANSWER = re.compile(r"\s*<think>(.*?)</think>(.*)", re.S)


@dataclass(frozen=True)
class EvalConfig:
    data: str | None = None              # JSONL of problems (`nanoseek data`); none: the generated held-out mix
    n: int = EVAL_PROBLEMS               # problems of the generated mix
    difficulty: int | None = DIFFICULTY  # of the generated mix and of few-shot examples
    samples: int = 1                     # k responses per problem
    temperature: float = 0.0             # 0: greedy
    max_new_tokens: int = 320            # longest response
    few_shot: int = 0                    # worked examples in the prompt (for base models); 0: `template`
    template: str = "chat"               # the prompt without examples: "chat" or "r1-zero" (R1 §2.2.1, a base model)
    batch_size: int = 64                 # sequences decoded together
    mtp_sequences: int = 16              # held-out sequences for the MTP accuracy (0: skip)
    seq_len: int = 256                   # tokens per held-out sequence of the MTP accuracy
    seed: int = 0                        # sampling seed
    device: str | None = None            # cpu, cuda or cuda:N; none: cuda when available, else cpu

    def __post_init__(self):
        check_fields(self, {**dict.fromkeys(("n", "samples", "max_new_tokens", "batch_size"), ">= 1"),
                            "seq_len": ">= 2", "difficulty": "in [1, 5]"}, default=">= 0")
        if self.samples > 1 and self.temperature == 0:
            raise ConfigError(f"{self.samples} samples at temperature 0 would all be the same; give a temperature > 0")
        check_template(self.template, self.few_shot)


def generate(model: Transformer, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop_id: int | None,
             temperature: float = 0.0, samples: int = 1, seed: int = 0, max_seqs: int = 64,
             progress: tqdm | None = None) -> list[list[int]]:
    """`samples` continuations of each prompt (prompt 0's, then prompt 1's, ...) until `stop_id` (kept; None: no
    stop token) or max_new_tokens, through the inference engine, at most `max_seqs` sequences at a time. Sampled
    responses are reproducible: prompt i draws with seed `seed * 1_000_003 + i * samples` (its samples from there
    on)."""
    longest = max(map(len, prompts)) + max_new_tokens
    max_seqs = max(max_seqs, samples)  # a prompt's samples run together
    engine = Engine(model, EngineConfig(cache_mb=cache_mb(model, max_seqs, longest), max_seqs=max_seqs,
                                        prefix_cache=False))
    stop = () if stop_id is None else (stop_id,)
    params = [SamplingParams(temperature=temperature, max_tokens=max_new_tokens, n=samples, stop_token_ids=stop,
                             ignore_eos=True, seed=seed * 1_000_003 + i * samples) for i in range(len(prompts))]
    ids = [engine.add_request(p, s) for p, s in zip(prompts, params)]
    done = {}
    for update in engine.stream(ids):
        if update.finish_reason is not None:
            done[update.request_id, update.index] = update.sequence.output_ids
            if progress is not None:
                progress.update(1)
    return [done[r, i] for r in ids for i in range(samples)]


def parse_response(text: str) -> tuple[bool, str]:
    """(well formed, answer): well formed is `<think>…</think>` then a non-empty answer; the answer is the text
    after the last `</think>` (the whole text when there is none)."""
    m = THINK_THEN_ANSWER.fullmatch(text)
    answer = text.rsplit("</think>", 1)[-1].strip()
    return bool(m and answer and "<think>" not in m.group(2)), answer


def answer_key(answer: str) -> object:
    """What counts as the same answer in a majority vote: the value of a number, else the text without spaces."""
    value = parse_number(answer)
    return value if isinstance(value, Fraction) else re.sub(r"\s+", "", answer)


def score(problems: Sequence[Problem], responses: Sequence[Sequence[str]], lengths: Sequence[Sequence[int]]) -> dict:
    """Accuracy, format rate, mean response length, the shares of responses with a self-check and with a
    correction (`data.styles`), per-task accuracy, and with k > 1 pass@k and maj@k.
    responses[i] are the k decoded responses to problems[i]; lengths[i] their token counts."""
    k = len(responses[0])
    first, all_correct, formats, passed, majority = [], [], [], [], []
    by_task: dict[str, list[bool]] = {}
    for problem, outs in zip(problems, responses):
        parsed = [parse_response(text) for text in outs]
        correct = [verify(problem, answer) for _, answer in parsed]
        first.append(correct[0])
        all_correct += correct
        formats += [ok for ok, _ in parsed]
        passed.append(any(correct))
        votes = Counter(answer_key(a) for _, a in parsed if a)
        if votes:
            top = votes.most_common(1)[0][0]
            majority.append(next(c for (_, a), c in zip(parsed, correct) if a and answer_key(a) == top))
        else:
            majority.append(False)
        by_task.setdefault(problem.task, []).append(correct[0] if k == 1 else sum(correct) / k)
    figures = {
        "problems": len(problems),
        "samples": k,
        "accuracy": _mean(first) if k == 1 else _mean(all_correct),
        "format_rate": _mean(formats),
        "mean_response_tokens": _mean([n for row in lengths for n in row]),
        "self_check_rate": _mean([has_self_check(text) for outs in responses for text in outs]),
        "correction_rate": _mean([has_correction(text) for outs in responses for text in outs]),
        "accuracy_by_task": {task: _mean(v) for task, v in sorted(by_task.items())},
    }
    if k > 1:
        figures[f"pass@{k}"] = _mean(passed)
        figures[f"maj@{k}"] = _mean(majority)
    return figures


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


@torch.no_grad()
def mtp_accuracy(model: Transformer, tokens: torch.Tensor) -> dict[str, float]:
    """MTP module 1 on sequences (n, T + 1): at position i it reads h_i and token t_{i+1} and predicts t_{i+2}.
    `mtp_accuracy`: its argmax equals t_{i+2}; `mtp_agreement`: it equals the main model's argmax at i + 1 (the
    acceptance test of self-speculative decoding with greedy verification)."""
    device = next(model.parameters()).device
    x = tokens[:, :-1].to(device)
    targets = tokens[:, 1:].to(device)
    h = model.hidden_states(x)
    main = model.head(h).argmax(-1)                                                 # (n, T): predicts t_{i+1}
    draft = model.mtp_head(0, model.mtp_hidden(0, h[:, :-1], x[:, 1:])).argmax(-1)  # (n, T-1): predicts t_{i+2}
    return {"mtp_accuracy": (draft == targets[:, 1:]).float().mean().item(),
            "mtp_agreement": (draft == main[:, 1:]).float().mean().item()}


def load_problems(config: EvalConfig) -> list[Problem]:
    if config.data is None:
        return eval_problems(config.n, config.difficulty)
    problems = [Problem.from_row(row) for row in read_rows(config.data)]
    unknown = sorted({p.task for p in problems} - set(TASKS))
    if unknown:
        raise DataError(f"{config.data}: rows of unknown task(s) {unknown}; the verifiers know {sorted(TASKS)}")
    return problems


def evaluate(model: Transformer, tokenizer: Tokenizer, problems: Sequence[Problem], config: EvalConfig) -> dict:
    """All figures for `model` on `problems` (see the module docstring)."""
    model.eval()
    shots = {task: few_shot_examples(task, config.few_shot, config.difficulty) for task in {p.task for p in problems}}
    prompts = [prompt_ids(tokenizer, p, shots[p.task], config.template) for p in problems]
    limit = model.config.max_position_embeddings
    too_long = [i for i, p in enumerate(prompts) if len(p) + config.max_new_tokens > limit]
    if too_long:
        raise ConfigError(f"prompt {too_long[0]} has {len(prompts[too_long[0]])} tokens; with max_new_tokens "
                          f"{config.max_new_tokens} it passes the model's {limit} positions")
    responses = [[""] * config.samples for _ in problems]
    lengths = [[0] * config.samples for _ in problems]
    with tqdm(total=len(problems) * config.samples, desc="eval", unit="response", dynamic_ncols=True) as bar:
        outs = generate(model, prompts, config.max_new_tokens, tokenizer.eos_id, config.temperature, config.samples,
                        config.seed, config.batch_size, bar)
    for j, ids in enumerate(outs):
        i, s = divmod(j, config.samples)
        lengths[i][s] = len(ids)
        responses[i][s] = tokenizer.decode(ids[:-1] if ids and ids[-1] == tokenizer.eos_id else ids)
    figures = score(problems, responses, lengths)
    figures["prompt"] = f"{config.few_shot}-shot" if config.few_shot else PROMPTS[config.template]
    if config.mtp_sequences and len(model.mtp):
        tokens = heldout_sequences(tokenizer, text_source(()), config.mtp_sequences, config.seq_len, config.difficulty)
        if tokens is not None:
            figures.update(mtp_accuracy(model, tokens))
    return figures


def evaluate_checkpoint(path: str | Path, config: EvalConfig) -> dict:
    """Load checkpoint `path` (and the tokenizer beside it, else the default one) and evaluate it."""
    problems = load_problems(config)  # a bad --data file fails before the model loads
    model = load_checkpoint(path, device=device_of(config.device))
    tokenizer = Tokenizer.from_dir(path) if (Path(path) / "tokenizer.json").is_file() else default_tokenizer()
    return evaluate(model, tokenizer, problems, config)


def format_report(figures: dict) -> str:
    """The figures as aligned lines for the terminal."""
    rows = [("prompt", figures["prompt"]), ("problems", f"{figures['problems']} x {figures['samples']} sample(s)"),
            ("accuracy", f"{figures['accuracy']:.1%}")]
    rows += [(f"  {task}", f"{acc:.1%}") for task, acc in figures["accuracy_by_task"].items()]
    rows += [(k, f"{figures[k]:.1%}") for k in figures if k.startswith(("pass@", "maj@"))]
    rows += [("format rate", f"{figures['format_rate']:.1%}"),
             ("mean response length", f"{figures['mean_response_tokens']:.1f} tokens"),
             ("with a self-check", f"{figures['self_check_rate']:.1%}"),
             ("with a correction", f"{figures['correction_rate']:.1%}")]
    if "mtp_accuracy" in figures:
        rows += [("MTP next-next-token accuracy", f"{figures['mtp_accuracy']:.1%}"),
                 ("MTP agreement with main model", f"{figures['mtp_agreement']:.1%}")]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
