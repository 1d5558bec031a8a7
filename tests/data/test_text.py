"""Tests for nanoseek/data/text.py: the user's txt / jsonl / parquet files and the stdlib default."""
import json
from pathlib import Path
from itertools import islice

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nanoseek.data.text import MIN_DOC_CHARS, SKIP_DIRS, read_documents, stdlib_documents, stdlib_root, stdlib_sources
from nanoseek.errors import DataError

DOCS = ["First document,\nover two lines.", "Second one.", "Third: caf\u00e9 \u2014 na\u00efve \U0001f389"]


def test_txt_paragraphs(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n" + DOCS[0] + "\n\n  \n\n" + DOCS[1] + "\n \t\n" + DOCS[2], encoding="utf-8")
    assert list(read_documents(path)) == DOCS


def test_jsonl(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(json.dumps({"text": d, "id": i}) for i, d in enumerate(DOCS)) + "\n\n", encoding="utf-8")
    assert list(read_documents(path)) == DOCS


def test_parquet_in_batches(tmp_path):
    path = tmp_path / "corpus.parquet"
    texts = [f"document number {i}" for i in range(3000)]
    pq.write_table(pa.table({"id": list(range(3000)), "text": texts}), path, row_group_size=700)
    assert list(read_documents(path)) == texts


def test_reading_streams(tmp_path):
    """The first documents arrive before a fault further on is even read."""
    path = tmp_path / "late_fault.txt"
    path.write_bytes(b"good start\n\n" + b"filler line\n" * 20000 + b"\xff\xfe broken\n")
    docs = read_documents(path)
    assert next(docs) == "good start"
    with pytest.raises(DataError, match="late_fault.txt"):
        list(docs)


@pytest.mark.parametrize("name,content,match", [
    ("empty.txt", "\n  \n\n", "empty.txt holds no documents"),
    ("empty.jsonl", "", "empty.jsonl holds no documents"),
    ("bad.jsonl", '{"text": "ok"}\n{"text": broken\n', r"bad.jsonl:2: not valid JSON"),
    ("notext.jsonl", '{"body": "no text field"}\n', r"notext.jsonl:1: expected an object with a string 'text'"),
    ("numbers.jsonl", '{"text": 42}\n', r"numbers.jsonl:1"),
    ("corpus.csv", "text\nhello\n", "unknown suffix '.csv'"),
    ("fake.parquet", "not parquet at all", "fake.parquet is not a readable parquet file"),
])
def test_bad_files_name_themselves(tmp_path, name, content, match):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError, match=match):
        list(read_documents(path))


def test_missing_file_and_wrong_parquet_column(tmp_path):
    with pytest.raises(DataError, match="nowhere.txt does not exist"):
        read_documents(tmp_path / "nowhere.txt")
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "body.parquet")
    with pytest.raises(DataError, match=r"body.parquet: expected a string column 'text', found columns \['body'\]"):
        list(read_documents(tmp_path / "body.parquet"))
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "ints.parquet")
    with pytest.raises(DataError, match="ints.parquet: column 'text' has type int64"):
        list(read_documents(tmp_path / "ints.parquet"))


def test_stdlib_default_is_real_prose_in_a_fixed_order():
    docs = list(islice(stdlib_documents(), 300))
    assert len(docs) == 300 and len(set(docs)) == 300
    assert all(len(d) >= MIN_DOC_CHARS for d in docs)
    words = " ".join(docs).split()
    assert len(words) > 10000 and sum(w.isalpha() for w in words) / len(words) > 0.5
    assert docs[:20] == list(islice(stdlib_documents(), 20))


def test_stdlib_sources_skip_tests_and_installed_packages():
    root = stdlib_root()
    sources = [p.relative_to(root) for p in stdlib_sources()]
    assert len(sources) > 200 and len(set(sources)) == len(sources)
    assert Path("textwrap.py") in sources and Path("json/__init__.py") in sources
    for p in sources:
        assert not any(part in SKIP_DIRS or part.startswith("test") for part in p.parts), p
