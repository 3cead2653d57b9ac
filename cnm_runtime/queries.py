"""The queries of a cnm-run: JSON lines, or an original annotation file, streamed one at a time.

Every line either becomes a ``Query`` or a ``QueryError`` record saying what is wrong with it, so a
bad line never stops a run. JSON lines hold ``video``, ``query``, optional ``qid`` (else the 0-based
line number), optional ``duration`` (seconds) and optional ``timestamps`` ``[start, end]`` (seconds).
An original annotation file is a JSON list of ``[video, duration, [start, end], sentence]``; there
the 0-based entry number is the qid.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from cnm_runtime.annotations import parse_annotation
from cnm_runtime.errors import InputError


@dataclass(frozen=True)
class Query:
    line: int  # 1-based line of the queries file (entry number for an annotation list)
    qid: str | int
    video: str
    sentence: str
    duration: float | None  # seconds
    timestamps: tuple[float, float] | None  # ground truth, seconds


@dataclass(frozen=True)
class QueryError:
    """One query (or input line) that produced no prediction, and why."""

    qid: str | int | None
    line: int
    code: str
    message: str

    def record(self) -> dict[str, Any]:
        return {"qid": self.qid, "line": self.line, "code": self.code, "message": self.message}


def qid_key(qid: str | int | None) -> str:
    """A hashable key that tells ``1`` from ``"1"``, the same for a qid read back from the output."""
    return json.dumps(qid)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def query_from_record(record: Any, line: int) -> Query:
    """Check one JSON record; InputError names the line and the field otherwise."""
    where = f"line {line}"
    if not isinstance(record, dict):
        raise InputError("not_an_object", f"{where}: expected a JSON object, got {type(record).__name__}")
    for name in ("video", "query"):
        if name not in record:
            raise InputError("missing_field", f"{where}: no {name!r} field")
        if not isinstance(record[name], str):
            raise InputError("bad_field", f"{where}: {name!r} must be a string, got {record[name]!r}")
    if not record["video"]:
        raise InputError("bad_field", f"{where}: 'video' is empty")
    qid = record.get("qid", line - 1)
    if isinstance(qid, bool) or not isinstance(qid, (str, int)):
        raise InputError("bad_field", f"{where}: 'qid' must be a string or an integer, got {qid!r}")
    duration = record.get("duration")
    if duration is not None:
        if not _number(duration):
            raise InputError("bad_field", f"{where}: 'duration' must be a number of seconds, got {duration!r}")
        if duration <= 0:
            raise InputError("bad_duration", f"{where}: 'duration' must be positive, got {duration!r}")
    timestamps = record.get("timestamps")
    if timestamps is not None:
        if not (isinstance(timestamps, list) and len(timestamps) == 2 and all(map(_number, timestamps))):
            raise InputError("bad_field", f"{where}: 'timestamps' must be [start, end] in seconds, got {timestamps!r}")
        if timestamps[0] > timestamps[1]:
            raise InputError("bad_field", f"{where}: 'timestamps' start {timestamps[0]} is after end {timestamps[1]}")
        timestamps = (float(timestamps[0]), float(timestamps[1]))
    return Query(line, qid, record["video"], record["query"],
                 None if duration is None else float(duration), timestamps)


@dataclass(frozen=True)
class QueryLine:
    """One entry of a queries source as read, before it is checked: reading is cheap and runs in order,
    parsing runs where batches are made (in feed processes too)."""

    line: int  # 1-based line of the queries file (entry number for an annotation list)
    content: bytes | list | dict  # a JSON line's bytes, an annotation-list entry, or a record given in Python


def parse(item: QueryLine) -> Query | QueryError:
    """The ``Query`` of one entry, or a ``QueryError`` saying what is wrong with it."""
    line, content = item.line, item.content
    if isinstance(content, bytes):
        try:
            content = json.loads(content)
        except json.JSONDecodeError as error:
            return QueryError(line - 1, line, "malformed_json", f"line {line}: not valid JSON ({error.msg})")
    elif isinstance(content, list):
        try:
            annotation = parse_annotation(content, f"entry {line - 1}")
        except ValueError as error:
            return QueryError(line - 1, line, "malformed_entry", str(error))
        content = {"qid": line - 1, "video": annotation.video, "query": annotation.sentence,
                   "duration": annotation.duration, "timestamps": [annotation.start, annotation.end]}
    try:
        return query_from_record(content, line)
    except InputError as error:
        qid = content.get("qid", line - 1) if isinstance(content, dict) else line - 1
        return QueryError(qid if isinstance(qid, (str, int)) else None, line, error.code, error.message)


def _json_lines(path: Path) -> Iterator[QueryLine]:
    with open(path, "rb") as handle:
        for line, text in enumerate(handle, start=1):
            if text.strip():
                yield QueryLine(line, text)


def _annotation_list(path: Path) -> Iterator[QueryLine | QueryError]:
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        yield QueryError(None, error.lineno, "malformed_json", f"{path}: not a valid JSON annotation list ({error})")
        return
    for index, item in enumerate(items):
        yield QueryLine(index + 1, item)


def _starts_with_list(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(4096).lstrip()
    return head.startswith(b"[")


def read_lines(path: str | Path) -> Iterator[QueryLine | QueryError]:
    """The entries of ``path`` in file order, unparsed; a file whose first character is ``[`` is an
    annotation list."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"queries file {path} does not exist")
    return _annotation_list(path) if _starts_with_list(path) else _json_lines(path)


def read_queries(path: str | Path) -> Iterator[Query | QueryError]:
    """The queries of ``path`` in file order, each parsed."""
    return (parse(item) if isinstance(item, QueryLine) else item for item in read_lines(path))


def count_queries(path: str | Path) -> int:
    """How many queries ``path`` holds (non-blank lines, or list entries), for a progress bar's total."""
    path = Path(path)
    if _starts_with_list(path):
        try:
            return len(json.loads(path.read_text(encoding="utf-8")))
        except json.JSONDecodeError:
            return 1
    with open(path, "rb") as handle:
        return sum(1 for text in handle if text.strip())


def as_lines(source: str | Path | Iterable[Query | QueryError | dict]) -> Iterator[QueryLine | Query | QueryError]:
    """A queries file's entries, or records given in Python (dicts as in JSON lines, numbered from line 1)."""
    if isinstance(source, (str, Path)):
        yield from read_lines(source)
        return
    for line, item in enumerate(source, start=1):
        yield item if isinstance(item, (Query, QueryError)) else QueryLine(line, item)
