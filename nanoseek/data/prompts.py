"""The prompts a model is asked in: the chat template (a chat model), R1-Zero's plain-text template (R1 §2.2.1,
Table 1: a base model under RL), or worked problems of the same task in the pretraining format (a base model,
few-shot), each closed by end-of-sequence, then the question."""
from __future__ import annotations

from typing import Sequence

from nanoseek.data.mix import render
from nanoseek.data.problem import Problem
from nanoseek.data.sources import EVAL_SEED
from nanoseek.data.tasks import TASKS, generate as generate_problems
from nanoseek.errors import ConfigError
from nanoseek.tokenizer import Tokenizer, chat_ids

# R1 §2.2.1, Table 1: DeepSeek-R1-Zero's template, with our answer format (the answer follows `</think>`, no tags)
R1_ZERO_TEMPLATE = ("A conversation between User and Assistant. The user asks a question, and the Assistant solves "
                    "it. The assistant first thinks about the reasoning process in the mind and then provides the user "
                    "with the answer. The reasoning process is enclosed within <think> </think> tags, followed by the "
                    "answer, i.e., <think> reasoning process here </think> answer here. User: {prompt}\nAssistant:")
TEMPLATES = ("chat", "r1-zero")
PROMPTS = {"chat": "chat template", "r1-zero": "R1-Zero template"}   # as reports name them


def check_template(template: str, few_shot: int = 0) -> None:
    if template not in TEMPLATES:
        raise ConfigError(f"template {template!r}: expected one of {TEMPLATES}")
    if template != "chat" and few_shot:
        raise ConfigError(f"few_shot {few_shot} and template {template!r} are two prompts; choose one")


def prompt_ids(tokenizer: Tokenizer, problem: Problem, shots: Sequence[Problem], template: str = "chat") -> list[int]:
    """The chat template with a generation prompt, R1-Zero's plain-text template (`template="r1-zero"`), or (with
    shots) worked problems in pretraining format, each ended by end-of-sequence as in packing, then the question and
    a newline."""
    if not shots and template == "r1-zero":
        return tokenizer.encode(R1_ZERO_TEMPLATE.format(prompt=problem.prompt))
    if not shots:
        return chat_ids(tokenizer, [{"role": "user", "content": problem.prompt}], add_generation_prompt=True)[0]
    ids: list[int] = []
    for shot in shots:
        ids += tokenizer.encode(render(shot)) + [tokenizer.eos_id]
    return ids + tokenizer.encode(problem.prompt + "\n")


def few_shot_examples(task: str, k: int, difficulty: int | None) -> list[Problem]:
    if k == 0 or task not in TASKS:
        return []
    return generate_problems(task, k, EVAL_SEED, "train", difficulty)
