"""Natural text as a stream of documents, never a whole file in memory.

- `read_documents(path)`: the user's own `.txt` (documents separated by blank lines), `.jsonl`
  (one object per line with a string `text`) or `.parquet` (a string `text` column, read one
  record batch at a time with pyarrow).
- `stdlib_documents()`: the built-in default that needs no download, the docstrings of Python's
  own standard library (modules, classes, functions), in a fixed order."""
from __future__ import annotations

import ast
import hashlib
import json
import os
import sysconfig
from pathlib import Path
from typing import Iterator

from nanoseek.errors import DataError

PARQUET_BATCH_ROWS = 1024
# stdlib folders that are tests, tools, generated tables or third-party installs, not prose
SKIP_DIRS = {"site-packages", "dist-packages", "idlelib", "lib2to3", "turtledemo", "ensurepip",
             "encodings", "pydoc_data", "__pycache__", "__phello__"}
MIN_DOC_CHARS = 64  # shorter docstrings ("Return self.") are too thin to teach anything


def read_documents(path: str | Path) -> Iterator[str]:
    """Stream the documents of one text file; DataError (naming the file) when it is missing,
    has an unknown suffix, holds no documents, or is malformed."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"text file {path} does not exist")
    readers = {".txt": _txt, ".jsonl": _jsonl, ".parquet": _parquet}
    if path.suffix not in readers:
        raise DataError(f"text file {path}: unknown suffix {path.suffix!r}, expected one of {sorted(readers)}")
    return _nonempty(path, readers[path.suffix](path))


def _nonempty(path: Path, docs: Iterator[str]) -> Iterator[str]:
    n = 0
    for doc in docs:
        n += 1
        yield doc
    if n == 0:
        raise DataError(f"text file {path} holds no documents")


def _txt(path: Path) -> Iterator[str]:
    lines = []
    with open(path, encoding="utf-8") as f:
        try:
            for line in f:
                if line.strip():
                    lines.append(line.rstrip("\n"))
                elif lines:
                    yield "\n".join(lines)
                    lines = []
        except UnicodeDecodeError as e:
            raise DataError(f"text file {path} is not UTF-8: {e}") from e
    if lines:
        yield "\n".join(lines)


def jsonl_rows(path: Path, what: str) -> Iterator[tuple[int, str, object]]:
    """(line number, line, its JSON value) for each non-blank line of a JSONL file; DataError naming the file and
    the line for one that is not JSON, and for a file that is not UTF-8 (`what` says what file it is)."""
    with open(path, encoding="utf-8") as f:
        try:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield i, line, json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{i}: not valid JSON ({e})") from None
        except UnicodeDecodeError as e:
            raise DataError(f"{what} {path} is not UTF-8: {e}") from None


def _jsonl(path: Path) -> Iterator[str]:
    for i, line, row in jsonl_rows(path, "text file"):
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise DataError(f"{path}:{i}: expected an object with a string 'text' field, got {line[:80].strip()}")
        if row["text"].strip():
            yield row["text"]


def _parquet(path: Path) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        f = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path} is not a readable parquet file: {e}") from e
    schema = f.schema_arrow
    if "text" not in schema.names:
        raise DataError(f"{path}: expected a string column 'text', found columns {schema.names}")
    kind = schema.field("text").type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise DataError(f"{path}: column 'text' has type {kind}, expected string")
    for batch in f.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=["text"]):
        for text in batch.column(0).to_pylist():
            if text and text.strip():
                yield text


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_sources() -> Iterator[Path]:
    """The standard library's .py files in sorted order, without tests and tool folders."""
    for folder, dirs, files in os.walk(stdlib_root()):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith(("test", "config-")))
        for name in sorted(files):
            if name.endswith(".py") and not name.startswith("test"):
                yield Path(folder, name)


def docstrings(tree: ast.AST) -> Iterator[str]:
    """Docstrings of a module and its classes and functions, in source order."""
    if isinstance(tree, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        doc = ast.get_docstring(tree)
        if doc:
            yield doc
    for child in ast.iter_child_nodes(tree):
        yield from docstrings(child)


def stdlib_documents() -> Iterator[str]:
    """One document per standard-library docstring of at least MIN_DOC_CHARS characters, each
    text once (re-exported modules repeat theirs); on Python 3.11 about 4,500 documents, 1.5M characters."""
    seen = set()
    for path in stdlib_sources():
        for doc in docstrings(ast.parse(path.read_bytes(), filename=str(path))):
            key = hashlib.sha1(doc.encode()).digest()
            if len(doc) >= MIN_DOC_CHARS and key not in seen:
                seen.add(key)
                yield doc
