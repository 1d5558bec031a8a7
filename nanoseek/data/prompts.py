"""The prompts a model is asked in: the chat template (a chat model), R1-Zero's plain-text template (R1 §2.2.1,
Table 1: a base model under RL), or worked problems of the same task in the pretraining format (a base model,
few-shot), each closed by end-of-sequence, then the question."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from nanoseek.atomic import write_atomic
from nanoseek.data.mix import render
from nanoseek.data.problem import Problem
from nanoseek.data.sources import DIFFICULTY, EVAL_SEED
from nanoseek.data.tasks import TASKS, generate as generate_problems, generate_mix
from nanoseek.errors import ConfigError, DataError
from nanoseek.tokenizer import Tokenizer, chat_ids

# R1 §2.2.1, Table 1: DeepSeek-R1-Zero's template, with our answer format (the answer follows `</think>`, no tags)
R1_ZERO_TEMPLATE = ("A conversation between User and Assistant. The user asks a question, and the Assistant solves "
                    "it. The assistant first thinks about the reasoning process in the mind and then provides the user "
                    "with the answer. The reasoning process is enclosed within <think> </think> tags, followed by the "
                    "answer, i.e., <think> reasoning process here </think> answer here. User: {prompt}\nAssistant:")
TEMPLATES = ("chat", "r1-zero")
PROMPTS = {"chat": "chat template", "r1-zero": "R1-Zero template"}   # as reports name them

PROMPT_FORMAT = "prompt.json"  # beside a checkpoint: the prompt its model was trained for


def check_template(template: str, few_shot: int = 0) -> None:
    if template not in TEMPLATES:
        raise ConfigError(f"template {template!r}: expected one of {TEMPLATES}")
    if template != "chat" and few_shot:
        raise ConfigError(f"few_shot {few_shot} and template {template!r} are two prompts; choose one")


def prompt_ids(tokenizer: Tokenizer, problem: Problem, shots: Sequence[Problem], template: str = "chat") -> list[int]:
    """The chat template with a generation prompt, R1-Zero's plain-text template (`template="r1-zero"`), or (with
    shots) worked problems in pretraining format, each ended by end-of-sequence as in packing, then the question and
    a newline."""
    return question_ids(tokenizer, problem.prompt, shots, template)


def question_ids(tokenizer: Tokenizer, question: str, shots: Sequence[Problem], template: str = "chat") -> list[int]:
    """`prompt_ids` of a question given as text."""
    if not shots and template == "r1-zero":
        return tokenizer.encode(R1_ZERO_TEMPLATE.format(prompt=question))
    if not shots:
        return chat_ids(tokenizer, [{"role": "user", "content": question}], add_generation_prompt=True)[0]
    ids: list[int] = []
    for shot in shots:
        ids += tokenizer.encode(render(shot)) + [tokenizer.eos_id]
    return ids + tokenizer.encode(question + "\n")


def prompt_name(few_shot: int, template: str) -> str:
    """A prompt as reports and `nanoseek generate --prompt-format` name it: "1-shot", "chat" or "r1-zero"."""
    return f"{few_shot}-shot" if few_shot else template


def save_prompt_format(folder: str | Path, few_shot: int, template: str) -> None:
    """Record in a checkpoint folder the prompt its model was trained for (PROMPT_FORMAT), which `nanoseek generate`
    then uses by itself."""
    check_template(template, few_shot)
    write_atomic(Path(folder) / PROMPT_FORMAT, json.dumps({"few_shot": few_shot, "template": template,
                                                          "prompt": prompt_name(few_shot, template)}) + "\n")


def load_prompt_format(folder: str | Path) -> str | None:
    """The prompt a checkpoint folder records ("1-shot", "chat", "r1-zero"), None when it records none."""
    file = Path(folder) / PROMPT_FORMAT
    if not file.is_file():
        return None
    try:
        saved = json.loads(file.read_text())
        return prompt_name(int(saved["few_shot"]), str(saved["template"]))
    except (ValueError, KeyError, TypeError):
        raise DataError(f"{file} is not a prompt record: expected JSON with few_shot and template") from None


def text_prompt_ids(tokenizer: Tokenizer, text: str, prompt: str) -> list[int]:
    """`text` as prompt `prompt` asks: "text" (continued as it is), "chat", "r1-zero", or "K-shot" (K worked
    problems of the task mix at the recipe's level before it)."""
    if prompt == "text":
        return tokenizer.encode(text, add_bos=True)
    if prompt in TEMPLATES:
        return question_ids(tokenizer, text, [], prompt)
    k = prompt.removesuffix("-shot")
    if not prompt.endswith("-shot") or not k.isdigit() or int(k) < 1:
        raise ConfigError(f"prompt format {prompt!r}: expected text, chat, r1-zero or K-shot (K >= 1)")
    return question_ids(tokenizer, text, generate_mix(int(k), EVAL_SEED, "train", DIFFICULTY))


def few_shot_examples(task: str, k: int, difficulty: int | None) -> list[Problem]:
    if k == 0 or task not in TASKS:
        return []
    return generate_problems(task, k, EVAL_SEED, "train", difficulty)
