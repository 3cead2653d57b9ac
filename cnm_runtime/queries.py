"""The queries of a cnm-run: JSON lines, or an original annotation file, streamed one at a time.

Every line either becomes a ``Query`` or a ``QueryError`` record saying what is wrong with it, so a
bad line never stops a run. JSON lines hold ``video``, ``query``, optional ``qid`` (else the 0-based
line number), optional ``duration`` (seconds) and optional ``timestamps`` ``[start, end]`` (seconds).
An original annotation file is a JSON list of ``[video, duration, [start, end], sentence]``; there
the 0-based entry number is the qid.

Files are UTF-8, a byte-order mark at the start allowed. Whatever a line holds (any size, nesting or
encoding) it becomes a ``Query`` or a ``QueryError``, and memory stays bounded: a line longer than
``MAX_LINE_BYTES`` is skipped to its end without being held, and an annotation list, one JSON document read
whole, may be at most ``MAX_LIST_BYTES``.
"""
from __future__ import annotations

import hashlib
import json
import math
import reprlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

from cnm_runtime.annotations import parse_annotation
from cnm_runtime.errors import InputError
from cnm_runtime.outcomes import QueryError

MAX_LINE_BYTES = 1 << 20  # 1 MiB: a query line is a few hundred bytes
# 64 MiB: many times any Charades-STA or ActivityNet Captions split; a list is parsed whole, and takes
# several times its size in memory then
MAX_LIST_BYTES = 64 << 20
BOM = b"\xef\xbb\xbf"  # UTF-8's byte-order mark
_SKIP_BYTES = 1 << 16  # how much of an overlong line is read at a time while skipping it

# Values quoted in messages are cut short: a line may hold a megabyte of them
_shown = reprlib.Repr()
_shown.maxstring, _shown.maxother, _shown.maxlong = 80, 80, 40


@dataclass(frozen=True)
class Query:
    line: int  # 1-based line of the queries file (entry number for an annotation list)
    qid: str | int
    video: str
    sentence: str
    duration: float | None  # seconds
    timestamps: tuple[float, float] | None  # ground truth, seconds


QidKey = tuple[bool, "str | int | None"]


def qid_key(qid: str | int | None) -> QidKey:
    """A hashable key that tells ``1`` from ``"1"``, the same for a qid read back from the output."""
    return isinstance(qid, str), qid


def _number(value: Any) -> bool:
    """A finite int or float (an int too large for a float is not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _check_text(name: str, value: str, where: str) -> None:
    """InputError unless ``value`` is Unicode text: JSON's escapes can make a lone surrogate, which no UTF-8
    output can hold."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError("bad_encoding", f"{where}: {name!r} holds a lone surrogate, not Unicode text: "
                                         f"{_shown.repr(value)}") from None


def _check_qid(qid: Any, where: str) -> None:
    if isinstance(qid, bool) or not isinstance(qid, (str, int)):
        raise InputError("bad_field", f"{where}: 'qid' must be a string or an integer, got {_shown.repr(qid)}")
    if isinstance(qid, str):
        _check_text("qid", qid, where)


def query_from_record(record: Any, line: int) -> Query:
    """Check one JSON record; InputError names the line and the field otherwise."""
    where = f"line {line}"
    if not isinstance(record, dict):
        raise InputError("not_an_object", f"{where}: expected a JSON object, got {type(record).__name__}")
    for name in ("video", "query"):
        if name not in record:
            raise InputError("missing_field", f"{where}: no {name!r} field")
        if not isinstance(record[name], str):
            raise InputError("bad_field", f"{where}: {name!r} must be a string, got {_shown.repr(record[name])}")
        _check_text(name, record[name], where)
    if not record["video"]:
        raise InputError("bad_field", f"{where}: 'video' is empty")
    qid = record.get("qid", line - 1)
    _check_qid(qid, where)
    duration = record.get("duration")
    if duration is not None:
        if not _number(duration):
            raise InputError("bad_field", f"{where}: 'duration' must be a number of seconds, got {_shown.repr(duration)}")
        if duration <= 0:
            raise InputError("bad_duration", f"{where}: 'duration' must be positive, got {_shown.repr(duration)}")
    timestamps = record.get("timestamps")
    if timestamps is not None:
        if not (isinstance(timestamps, list) and len(timestamps) == 2 and all(map(_number, timestamps))):
            raise InputError("bad_field",
                             f"{where}: 'timestamps' must be [start, end] in seconds, got {_shown.repr(timestamps)}")
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
    content: Any  # a JSON line's bytes, an annotation-list entry (any JSON value), or a record given in Python


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _load_json(data: bytes, where: str) -> Any:
    """The value of ``data``, strict JSON in UTF-8; InputError (``bad_encoding``, ``malformed_json``) saying
    ``where`` and what is wrong otherwise."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InputError("bad_encoding", f"{where}: not UTF-8 text (byte {data[error.start]:#04x} at offset "
                                         f"{error.start})") from None
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as error:
        at = f"column {error.colno}" if error.lineno == 1 else f"line {error.lineno} column {error.colno}"
        raise InputError("malformed_json", f"{where}: not valid JSON ({error.msg}: {at})") from None
    except RecursionError:
        raise InputError("malformed_json", f"{where}: nested deeper than Python's JSON reader goes") from None
    except ValueError as error:  # NaN or Infinity, or an integer of more digits than Python converts
        raise InputError("malformed_json", f"{where}: not valid JSON ({error})") from None


def _annotation_record(entry: list, line: int) -> dict[str, Any]:
    """An annotation-list entry as the record of a JSON line, its qid the entry number."""
    try:
        annotation = parse_annotation(entry, f"entry {line - 1}")
    except (ValueError, OverflowError, RecursionError):  # a number beyond float, or nested too deeply to show
        raise InputError("malformed_entry", f"entry {line - 1}: expected [video, duration, [start, end], "
                                            f"sentence], got {_shown.repr(entry)}") from None
    return {"qid": line - 1, "video": annotation.video, "query": annotation.sentence,
            "duration": annotation.duration, "timestamps": [annotation.start, annotation.end]}


def _record_qid(content: Any, line: int) -> str | int | None:
    """The qid an error record carries: the entry's own where it is a valid one, its line's otherwise."""
    qid = content.get("qid", line - 1) if isinstance(content, dict) else line - 1
    try:
        _check_qid(qid, "")
    except InputError:
        return None
    return qid


def parse(item: QueryLine) -> Query | QueryError:
    """The ``Query`` of one entry, or a ``QueryError`` saying what is wrong with it."""
    line, content = item.line, item.content
    try:
        if isinstance(content, bytes):
            content = _load_json(content, f"line {line}")
        elif isinstance(content, list):
            content = _annotation_record(content, line)
        return query_from_record(content, line)
    except InputError as error:
        return QueryError(_record_qid(content, line), line, error.code, error.message)


def _bounded_lines(handle: IO[bytes]) -> Iterator[bytes | None]:
    """The lines of ``handle``, None for each longer than MAX_LINE_BYTES (read on to its end in pieces)."""
    while text := handle.readline(MAX_LINE_BYTES + 1):
        if len(text) <= MAX_LINE_BYTES or text.endswith(b"\n"):
            yield text
            continue
        while (rest := handle.readline(_SKIP_BYTES)) and not rest.endswith(b"\n"):
            pass
        yield None


def _json_lines(path: Path) -> Iterator[QueryLine | QueryError]:
    with open(path, "rb") as handle:
        for line, text in enumerate(_bounded_lines(handle), start=1):
            if text is None:
                yield QueryError(line - 1, line, "line_too_long",
                                 f"line {line}: longer than {MAX_LINE_BYTES} bytes, skipped unread")
                continue
            if line == 1:
                text = text.removeprefix(BOM)
            if text.strip():
                yield QueryLine(line, text)


def _annotation_list(path: Path) -> Iterator[QueryLine | QueryError]:
    with open(path, "rb") as handle:
        data = handle.read(MAX_LIST_BYTES + 1)
    if len(data) > MAX_LIST_BYTES:
        yield QueryError(None, 1, "list_too_large", f"{path}: an annotation list larger than {MAX_LIST_BYTES} "
                                                     "bytes is not read; give its queries as JSON lines")
        return
    try:
        items = _load_json(data.removeprefix(BOM), f"{path} (an annotation list)")
    except InputError as error:
        yield QueryError(None, 1, error.code, error.message)
        return
    for index, item in enumerate(items):
        yield QueryLine(index + 1, item)


def _starts_with_list(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(4096).removeprefix(BOM).lstrip()
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
    """How many results ``path`` gives (non-blank lines, or list entries, or the one error of a list that
    cannot be read), for a progress bar's total."""
    return sum(1 for _ in read_lines(path))


def scan_queries(path: str | Path) -> tuple[int, str]:
    """``(count_queries, SHA-256 of the file)``."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return count_queries(path), digest.hexdigest()


def as_lines(source: str | Path | Iterable[Query | QueryError | dict]) -> Iterator[QueryLine | Query | QueryError]:
    """A queries file's entries, or records given in Python (dicts as in JSON lines, numbered from line 1)."""
    if isinstance(source, (str, Path)):
        yield from read_lines(source)
        return
    for line, item in enumerate(source, start=1):
        yield item if isinstance(item, (Query, QueryError)) else QueryLine(line, item)
