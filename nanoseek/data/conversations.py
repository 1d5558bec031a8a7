"""Conversations for supervised fine-tuning: a problem row {"prompt", "reasoning", "answer"} becomes the conversation
user: prompt / assistant: answer with the reasoning as `reasoning_content` (R1 §2.3.1: `<think>reasoning</think>`
then the summary); a row {"messages": [...]} is used as it is. Encoded in the chat template with a mask of the
assistant's tokens (`tokenizer.chat_ids`), and padded into batches whose labels are -100 off those tokens."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import torch

from nanoseek.data.problem import Problem
from nanoseek.data.text import jsonl_rows
from nanoseek.errors import DataError
from nanoseek.tokenizer import Tokenizer, chat_ids


def conversation(row: Problem | dict) -> list[dict]:
    """The chat messages of a problem (row) or a {"messages": [...]} row."""
    if isinstance(row, dict) and "messages" in row:
        return row["messages"]
    p = row if isinstance(row, Problem) else Problem.from_row(row)
    assistant = {"role": "assistant", "content": p.answer}
    if p.reasoning:
        assistant["reasoning_content"] = p.reasoning
    return [{"role": "user", "content": p.prompt}, assistant]


def read_rows(path: str | Path) -> Iterator[dict]:
    """Stream the rows of a JSONL file of problems or conversations; DataError (naming file and line) otherwise."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"SFT data file {path} does not exist")
    n = 0
    for i, line, row in jsonl_rows(path, "SFT data file"):
        if not isinstance(row, dict) or not (isinstance(row.get("messages"), list) or {"prompt", "answer"} <= set(row)):
            raise DataError(f"{path}:{i}: expected {{\"prompt\", \"answer\"[, \"reasoning\"]}} or "
                            f"{{\"messages\": [...]}}, got {line[:80].strip()}")
        row.setdefault("task", "")
        n += 1
        yield row
    if n == 0:
        raise DataError(f"SFT data file {path} is empty")


def encode(tokenizer: Tokenizer, row: Problem | dict, seq_len: int) -> tuple[list[int], list[int]]:
    ids, mask = chat_ids(tokenizer, conversation(row))
    return ids[:seq_len + 1], mask[:seq_len + 1]


def pad_batch(encoded: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """input_ids (B, T) and labels (B, T): labels[i] = ids[i + 1] where that token is the assistant's, else -100."""
    T = max(len(ids) for ids, _ in encoded) - 1
    input_ids = torch.full((len(encoded), T), pad_id)
    labels = torch.full((len(encoded), T), -100)
    for row, (ids, mask) in enumerate(encoded):
        n = len(ids) - 1
        input_ids[row, :n] = torch.tensor(ids[:-1])
        targets = torch.tensor(ids[1:])
        labels[row, :n] = torch.where(torch.tensor(mask[1:], dtype=torch.bool), targets, -100)
    return {"input_ids": input_ids, "labels": labels}


def check_sft_files(paths: Sequence[str]) -> None:
    """Fail now, before a run writes anything, on a missing, empty or malformed first row."""
    for path in paths:
        next(read_rows(path))
