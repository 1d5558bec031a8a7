"""Rejection sampling (R1 §2.3.3): sample k completions of each question from an RL checkpoint and keep only the
verified-correct, well-formed ones, each distinct completion of a question once, as SFT data.

A completion is kept when the task's verifier accepts its answer (the accuracy reward), it has the R1 shape
(`<think>` and `</think>` once each, then an answer: the format reward), and its chain of thought is wholly in the
target language (the language-consistency reward at 1; R1 §2.3.3 filters out mixed-language reasoning), and no
worked step of it is false arithmetic. That last rule stands in, for our procedural tasks, for the judging of whole
chains of thought R1 §2.3.3 leaves to a model: a small policy often reaches a right answer through a wrong step
("8 - 5 = 1", then an answer that happens to verify), and fine-tuning on such a trace teaches the wrong fact. The
rows are problem rows, {"prompt", "reasoning", "answer", "task", ...} with the model's own reasoning and answer and
the problem's verifier fields, so `nanoseek sft --data` reads them and `nanoseek eval --data` could re-check them.
"""
from __future__ import annotations

import ast
import dataclasses
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from nanoseek.atomic import open_atomic, write_atomic
from nanoseek.checkpoint import load_checkpoint
from nanoseek.checks import check_fields
from nanoseek.config import ModelConfig
from nanoseek.cost import flops_per_token
from nanoseek.data.countdown import value
from nanoseek.data.prompts import prompt_ids
from nanoseek.data.styles import STEP, correction_line
from nanoseek.data.tasks import save_jsonl
from nanoseek.infer import Engine, EngineConfig, SamplingParams
from nanoseek.tokenizer import Tokenizer
from nanoseek.train.default_tokenizer import default_tokenizer
from nanoseek.train.evaluate import EvalConfig, load_problems
from nanoseek.train.rewards import accuracy_reward, language_reward, split_completion
from nanoseek.train.run_folder import COUNTS, PROMPTS, SAMPLES
from nanoseek.train.stage import device_of


@dataclass(frozen=True)
class RejectionConfig:
    checkpoint: str                    # the model to sample from
    prompts: str                       # JSONL of problems (`nanoseek data`)
    k: int = 4                         # completions sampled per question
    temperature: float = 1.0           # sampling temperature
    max_new_tokens: int = 256          # longest completion
    seed: int = 0                      # sampling seed
    edge: bool = False                 # keep only questions at the edge: greedy answer wrong, a sample right
    device: str | None = None          # cpu, cuda or cuda:N; none: cuda when available, else cpu

    def __post_init__(self):  # temperature > 0: k greedy samples would all be the same
        check_fields(self, {"seed": ">= 0"}, default="> 0")


# Why a completion is rejected, as the counts name it and as a report says it.
REJECTIONS = {"truncated": "truncated", "format": "ill-formed", "language": "mixed-language", "incorrect": "incorrect",
              "false_step": "with a false step", "duplicate": "duplicates", "solved": "of questions solved greedily"}


def at_edge(greedy_correct: bool, samples_correct: list[bool]) -> bool:
    """A question at the edge of the policy's competence: its greedy answer is wrong, yet some sample is right. Its
    verified samples teach what the policy can do but does not yet do by default (expert iteration, STaR / ReST;
    arXiv 2512.07783: RL lifts pass@k only at this edge)."""
    return not greedy_correct and any(samples_correct)

def false_step(reasoning: str) -> str | None:
    """The first worked step of `reasoning` (`data.styles.STEP`) whose arithmetic is wrong ("8 - 5 = 1"), or None.
    Not judged: a step starting with a negative number, and one the countdown verifier's exact arithmetic cannot
    value (an inexact division). Excused: a false step that the next line catches, 'wait: 8 - 5 = 3, not 1, so'
    (the corrected style of the pretraining mix, `data.styles`): the trace reaches its answer through true steps
    only, and the correction is the reflection R1 §2.2.4 wants kept. A 'wait:' line is itself a step, so a
    correction to a wrong value is a false step."""
    for m in STEP.finditer(reasoning):
        worked = value(ast.parse(m[1], mode="eval").body, [])
        if worked is not None and worked != int(m[2]) and not _caught(reasoning, m, worked):
            return m[0]
    return None


def _caught(reasoning: str, m: re.Match, worked) -> bool:
    """Whether the line after the one of step `m` corrects it."""
    end = reasoning.find("\n", m.end())
    following = reasoning[end + 1:] if end >= 0 else ""
    return worked.denominator == 1 and following.startswith(correction_line(m[1], int(worked), int(m[2])))


def judge(completion: str, problem) -> str:
    """Why a completion is rejected ("format", "language", "incorrect", "false_step"), or "kept"."""
    parts = split_completion(completion)
    if parts is None:
        return "format"
    if language_reward(completion) < 1:
        return "language"
    if not accuracy_reward(completion, problem):
        return "incorrect"
    return "false_step" if false_step(parts[0]) else "kept"


def rejected(counts: dict) -> str:
    """'2 truncated, 0 ill-formed, ...': the rejections of rejection_sample's counts (one written before a reason
    existed counts 0 of it)."""
    return ", ".join(f"{counts.get(key, 0)} {words}" for key, words in REJECTIONS.items())


def rejection_sample(config: RejectionConfig, out: str | Path) -> dict:
    """Write the kept rows to `out` (JSONL, atomically), question by question; returns the counts: questions,
    samples, each rejection reason (REJECTIONS: truncated at max_new_tokens, format, language, incorrect, false step,
    duplicate, and with `edge` a question the greedy answer solves), rows kept, questions with at least one row,
    (with `edge`) questions at the edge, tokens generated and the mean length of prompt + completion."""
    problems = load_problems(EvalConfig(data=config.prompts))   # a bad file fails before the model loads
    out = Path(out)
    model = load_checkpoint(config.checkpoint, device=device_of(config.device)).eval()
    path = Path(config.checkpoint)
    tokenizer = Tokenizer.from_dir(path) if (path / "tokenizer.json").is_file() else default_tokenizer()
    # 256 sequences decoded together sampled 2048 answers of the tiny model 17% faster than the engine's default 64
    engine = Engine(model, EngineConfig(prefix_cache=False, max_seqs=256))
    params = SamplingParams(temperature=config.temperature, max_tokens=config.max_new_tokens, n=config.k,
                            stop_token_ids=(tokenizer.eos_id,))
    # each question its own seeds: sample i of question j uses seed + j·k + i
    requests = {engine.add_request(prompt_ids(tokenizer, p, []),
                                   dataclasses.replace(params, seed=config.seed + j * config.k)): j
                for j, p in enumerate(problems)}
    greedy = {}
    if config.edge:
        greedy = {engine.add_request(prompt_ids(tokenizer, p, []),
                                     dataclasses.replace(params, temperature=0.0, n=1)): j
                  for j, p in enumerate(problems)}
    counts = {"questions": len(problems), "samples": 0, **dict.fromkeys(REJECTIONS, 0), "kept": 0,
              "generated_tokens": 0}
    context = 0
    texts: list[dict[int, tuple[str, bool]]] = [{} for _ in problems]   # question -> sample index -> (text, finished)
    greedy_correct = [False] * len(problems)
    with tqdm(total=len(problems) * config.k + len(greedy), desc="rejection sampling", unit="sample",
              dynamic_ncols=True) as bar:
        for update in engine.stream([*requests, *greedy]):
            if update.finish_reason is None:
                continue
            ids = update.sequence.output_ids
            finished = bool(ids) and ids[-1] == tokenizer.eos_id
            text = tokenizer.decode(ids[:-1] if finished else ids)
            counts["generated_tokens"] += len(ids)
            context += len(update.sequence.tokens)
            if update.request_id in greedy:
                j = greedy[update.request_id]
                greedy_correct[j] = bool(accuracy_reward(text, problems[j]))
            else:
                texts[requests[update.request_id]][update.index] = (text, finished)
            bar.update(1)
    seen: set[tuple[str, str, str]] = set()
    solved: set[int] = set()
    with open_atomic(out) as f:
        for j, problem in enumerate(problems):
            samples = [texts[j][i] for i in sorted(texts[j])]
            edge = at_edge(greedy_correct[j], [bool(accuracy_reward(t, problem)) for t, _ in samples])
            if config.edge:
                counts["at_edge"] = counts.get("at_edge", 0) + edge
            for text, finished in samples:
                verdict = judge(text, problem) if finished else "truncated"
                counts["samples"] += 1
                if verdict == "kept" and config.edge and not edge:
                    verdict = "solved"
                if verdict == "kept":
                    reasoning, answer = split_completion(text)
                    key = (problem.prompt, reasoning, answer.strip())
                    if key in seen:
                        verdict = "duplicate"
                    else:
                        seen.add(key)
                        solved.add(j)
                        row = problem.to_row() | {"reasoning": reasoning, "answer": answer.strip()}
                        f.write(json.dumps(row, ensure_ascii=False) + "\n")
                counts[verdict] += 1
    counts["questions_solved"] = len(solved)
    counts["context"] = context // max(counts["samples"] + len(greedy), 1)
    return counts


def sample_into(folder: Path, problems: list, config: RejectionConfig, kept: str = SAMPLES) -> dict:
    """Rejection-sample `problems` from config.checkpoint into `folder` once: the questions (PROMPTS), the kept rows
    (`kept`) and the counts, with the seconds the sampling took and its FLOPs (each generated token one decode step
    at the mean context, no MTP drafting); a folder that has them already is read back."""
    if (folder / COUNTS).is_file():
        return json.loads((folder / COUNTS).read_text())
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    save_jsonl(problems, folder / PROMPTS)
    counts = rejection_sample(dataclasses.replace(config, prompts=str(folder / PROMPTS)), folder / kept)
    counts["seconds"] = time.perf_counter() - start
    counts["flops"] = (flops_per_token(ModelConfig.load(config.checkpoint), counts["context"], training=False,
                                       mtp=False) * counts["generated_tokens"])
    write_atomic(folder / COUNTS, json.dumps(counts, indent=1) + "\n")
    return counts
