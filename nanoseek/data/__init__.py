"""Training data: verifiable reasoning tasks with worked traces (`tasks`, one file per task),
natural text from the user's files or the standard library's docstrings (`text`), and the
mixer and packer that turn both into fixed-length token sequences (`mix`)."""
from nanoseek.data.problem import Problem
from nanoseek.data.tasks import TASKS, generate, generate_mix, save_jsonl, stream, stream_mix, verify

__all__ = ["Problem", "TASKS", "generate", "generate_mix", "save_jsonl", "stream", "stream_mix", "verify"]
