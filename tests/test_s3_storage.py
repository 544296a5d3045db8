"""
JSONL through Airflow's object storage on a real S3-compatible server (moto's, on 127.0.0.1).

What the batch operator's ``input_path`` / ``output_path`` rely on: ``ObjectStoragePath("s3://...",
conn_id=...)`` reaching the server named by an ``aws`` connection, a written file read back
streaming line by line, a second write replacing the first, and a read that seeks to a line's
byte offset. ``tests/s3.py`` runs the server; the packages it needs come with the dev extra, and a
missing one fails these tests (naming it) rather than skipping them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.s3 import S3Server, missing_packages, s3_server

pytestmark = pytest.mark.timeout(120)

LINES = 1000
#: s3fs's smallest write block: a file over it is sent as a multipart upload.
FIVE_MIB = 5 * 2**20


def require_packages() -> None:
    """Fail (not skip) the test if the dev extra's S3 packages are missing."""
    missing = missing_packages()
    if missing:
        pytest.fail(
            "the S3 tests need " + ", ".join(missing) + " (the dev extra has them: pip install -e '.[dev]')",
            pytrace=False,
        )


@pytest.fixture
def s3_bucket() -> Iterator[S3Server]:
    """An S3-compatible server on 127.0.0.1 with one empty bucket; ``.base_uri`` and ``.conn_id`` reach it."""
    require_packages()
    with s3_server() as server:
        yield server


def records(count: int, tag: str, pad: int = 0) -> list[dict[str, Any]]:
    """JSONL records of varying length, with non-ASCII text so that byte and character offsets differ."""
    return [{"i": i, "tag": tag, "text": f"line {i} " + "é→🍌" * (i % 5), "pad": "x" * pad} for i in range(count)]


def encode(record: dict[str, Any]) -> bytes:
    return json.dumps(record, ensure_ascii=False).encode() + b"\n"


def path_of(s3: S3Server, key: str) -> Any:
    from airflow.sdk import ObjectStoragePath

    return ObjectStoragePath(f"{s3.base_uri}/{key}", conn_id=s3.conn_id)


def write_jsonl(path: Any, rows: list[dict[str, Any]], **open_kwargs: Any) -> list[int]:
    """Write ``rows`` as JSONL through ``path.open("wb")``; return each line's byte offset and, last, the size."""
    offsets = [0]
    with path.open("wb", **open_kwargs) as f:
        for row in rows:
            line = encode(row)
            f.write(line)
            offsets.append(offsets[-1] + len(line))
    return offsets


def test_jsonl_round_trip_streaming_and_overwrite(s3_bucket: S3Server) -> None:
    path = path_of(s3_bucket, "batch/input.jsonl")
    assert not path.exists()
    first = records(LINES, "first")
    offsets = write_jsonl(path, first)

    assert path.exists()
    assert path.size() == offsets[-1]
    with path.open("rb") as f:
        count = 0
        for number, line in enumerate(f):
            assert line.endswith(b"\n"), number
            assert json.loads(line) == first[number]
            count += 1
    assert count == LINES

    # A second write replaces the object whole, here with a shorter one.
    second = records(10, "second")
    offsets = write_jsonl(path, second)
    assert path.size() == offsets[-1]
    with path.open("rb") as f:
        assert [json.loads(line) for line in f] == second
    # Text mode reads the same lines.
    with path.open("r", encoding="utf-8") as f:
        assert [json.loads(line) for line in f] == second
    assert [child.name for child in path_of(s3_bucket, "batch").iterdir()] == ["input.jsonl"]


def test_large_jsonl_multipart_write_and_block_reads(s3_bucket: S3Server) -> None:
    """~6 MB: a multipart upload of two parts, then a read in 256 KiB ranges whose tell() tracks each line."""
    path = path_of(s3_bucket, "batch/large.jsonl")
    rows = records(LINES, "large", pad=6000)
    offsets = write_jsonl(path, rows, block_size=FIVE_MIB)
    assert offsets[-1] > FIVE_MIB
    # S3 gives a multipart upload's object an ETag of "<md5 of the parts' md5s>-<number of parts>".
    assert path.stat()["ETag"].strip('"').endswith("-2"), path.stat()

    with path.open("rb", block_size=256 * 1024) as f:
        count = 0
        for number, line in enumerate(f):
            assert json.loads(line) == rows[number]
            assert f.tell() == offsets[number + 1], number
            count += 1
    assert count == LINES


def test_seek_to_a_line_offset(s3_bucket: S3Server) -> None:
    path = path_of(s3_bucket, "batch/seek.jsonl")
    rows = records(LINES, "seek", pad=50)
    offsets = write_jsonl(path, rows)
    lines = [encode(row) for row in rows]
    size = offsets[-1]

    # Small blocks, so that seeks land inside, before and beyond what was fetched last.
    with path.open("rb", block_size=4096) as f:
        for number in (500, 0, 999, 1, 998, 250, 250, 751):
            assert f.seek(offsets[number]) == offsets[number]
            assert f.readline() == lines[number], number
            assert f.tell() == offsets[number + 1], number
        # Reading on after a seek continues with the next lines.
        f.seek(offsets[700])
        assert [f.readline() for _ in range(3)] == lines[700:703]
        # A seek into the middle of a line reads its remainder.
        f.seek(offsets[42] + 5)
        assert f.readline() == lines[42][5:]
        # Relative and end-relative seeks.
        f.seek(offsets[10])
        assert f.seek(len(lines[10]), os.SEEK_CUR) == offsets[11]
        assert f.readline() == lines[11]
        assert f.seek(0, os.SEEK_END) == size
        assert f.readline() == b""

    # A fresh open that seeks straight to a line, as a resumed batch would.
    with path.open("rb") as f:
        f.seek(offsets[900])
        assert [json.loads(line) for line in f] == rows[900:]


def test_server_start_time(record_property: Callable[[str, object], None], capsys: pytest.CaptureFixture[str]) -> None:
    """Report (not assert) how long a server takes to start with its bucket; the first start imports moto."""
    require_packages()
    timings = []
    for _ in range(2):
        with s3_server() as server:
            timings.append(server.start_seconds)
            assert path_of(server, "probe").exists() is False
    record_property("s3_server_start_seconds", timings)
    with capsys.disabled():
        print(f"\nS3 server start (with bucket): {', '.join(f'{t:.3f} s' for t in timings)}")
