"""The queries of a cnm-run: JSON lines, or an original annotation file, streamed one at a time.

Every line either becomes a ``Query`` or a ``QueryError`` record saying what is wrong with it, so a
bad line never stops a run. JSON lines hold ``video``, ``query``, optional ``qid`` (else the 0-based
line number), optional ``duration`` (seconds) and optional ``timestamps`` ``[start, end]`` (seconds).
An original annotation file is a JSON list of ``[video, duration, [start, end], sentence]``; there
the 0-based entry number is the qid. Values are checked, never coerced (``cnm_runtime.fields``).

A file is an annotation list only when the whole file is one JSON array; otherwise every line is a
record of its own (a line holding an array is ``not_an_object``), so a stray array on the first line
costs that line only. Only a valid query claims its qid: a line that is not one gets an error record
with qid None.

Files are UTF-8, a byte-order mark at the start allowed. Whatever a line holds (any size, nesting or
encoding) it becomes a ``Query`` or a ``QueryError``, and memory stays bounded: a line longer than
``MAX_LINE_BYTES`` is skipped to its end without being held, and an annotation list, one JSON document read
whole, may be at most ``MAX_LIST_BYTES``. Whether a file that starts with ``[`` is one array is decided on
at most that much of it: a larger one is JSON lines when its first line already shows that it is not
one array (the array opened there closes on that line, or the line is not valid JSON), and otherwise an
annotation list too large to read: one ``list_too_large`` record, and nothing more of it is read.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

from cnm_runtime.annotations import parse_annotation
from cnm_runtime.errors import InputError, require_code
from cnm_runtime.fields import check_duration, check_text, check_timestamps, check_video, shown

MAX_LINE_BYTES = 1 << 20  # 1 MiB: a query line is a few hundred bytes
# 64 MiB: many times any Charades-STA or ActivityNet Captions split; a list is parsed whole, and takes
# several times its size in memory then
MAX_LIST_BYTES = 64 << 20
BOM = b"\xef\xbb\xbf"  # UTF-8's byte-order mark
_JSON_WHITESPACE = b" \t\r\n"
_SKIP_BYTES = 1 << 16  # how much of an overlong line, or of leading whitespace, is read at a time


@dataclass(frozen=True)
class Query:
    line: int  # 1-based line of the queries file (entry number + 1 for an annotation list)
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
    code: str  # one of cnm_runtime.errors.ERROR_CODES
    message: str

    def __post_init__(self) -> None:
        require_code(self.code)

    def record(self) -> dict[str, Any]:
        return {"qid": self.qid, "line": self.line, "code": self.code, "message": self.message}


QidKey = tuple[bool, "str | int | None"]


def qid_key(qid: str | int | None) -> QidKey:
    """A hashable key that tells ``1`` from ``"1"``, the same for a qid read back from the output."""
    return isinstance(qid, str), qid


def _check_qid(qid: Any, where: str) -> None:
    if isinstance(qid, bool) or not isinstance(qid, (str, int)):
        raise InputError("bad_field", f"{where}: 'qid' must be a string or an integer, got {shown(qid)}")
    if isinstance(qid, str):
        check_text("qid", qid, where)


def query_from_record(record: Any, line: int) -> Query:
    """Check one JSON record; InputError names the line and the field otherwise."""
    where = f"line {line}"
    if not isinstance(record, dict):
        raise InputError("not_an_object", f"{where}: expected a JSON object, got {type(record).__name__}")
    for name in ("video", "query"):
        if name not in record:
            raise InputError("missing_field", f"{where}: no {name!r} field")
    video, sentence = check_video(record["video"], where), check_text("query", record["query"], where)
    qid = record.get("qid", line - 1)
    _check_qid(qid, where)
    duration, timestamps = record.get("duration"), record.get("timestamps")
    return Query(line, qid, video, sentence, None if duration is None else check_duration(duration, where),
                 None if timestamps is None else check_timestamps(timestamps, where))


@dataclass(frozen=True)
class QueryLine:
    """One entry of a queries source as read, before it is checked: reading is cheap and runs in order,
    parsing runs where batches are made (in feed processes too)."""

    line: int  # 1-based line of the queries file (entry number + 1 for an annotation list)
    content: Any  # a JSON line's bytes, an annotation-list entry (any JSON value), or a record given in Python
    annotation: bool = False  # content is an annotation-list entry
    note: str = ""  # said after the message should the entry be an error: why the file is read line by line


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


def _annotation_query(entry: Any, line: int) -> Query:
    """An annotation-list entry as a query, its qid the entry number."""
    annotation = parse_annotation(entry, f"entry {line - 1}")
    return Query(line, line - 1, annotation.video, annotation.sentence, annotation.duration,
                 (annotation.start, annotation.end))


def parse(item: QueryLine) -> Query | QueryError:
    """The ``Query`` of one entry, or a ``QueryError`` saying what is wrong with it.

    Only a valid query claims a qid: an entry that is not one gets an error record with qid None, so that a
    later valid line with the qid it named (or its line's default) is predicted, not a ``duplicate_qid``.
    """
    try:
        if item.annotation:
            return _annotation_query(item.content, item.line)
        content = item.content
        if isinstance(content, bytes):
            content = _load_json(content, f"line {item.line}")
        return query_from_record(content, item.line)
    except InputError as error:
        message = f"{error.message}; {item.note}" if item.note else error.message
        return QueryError(None, item.line, error.code, message)


def _bounded_lines(handle: IO[bytes]) -> Iterator[bytes | None]:
    """The lines of ``handle``, None for each longer than MAX_LINE_BYTES (read on to its end in pieces)."""
    while text := handle.readline(MAX_LINE_BYTES + 1):
        if len(text) <= MAX_LINE_BYTES or text.endswith(b"\n"):
            yield text
            continue
        while (rest := handle.readline(_SKIP_BYTES)) and not rest.endswith(b"\n"):
            pass
        yield None


def _json_lines(path: Path, note: str = "") -> Iterator[QueryLine | QueryError]:
    """Every non-blank line of ``path``, the first with ``note``."""
    with open(path, "rb") as handle:
        for line, text in enumerate(_bounded_lines(handle), start=1):
            if text is None:
                yield QueryError(None, line, "line_too_long",
                                 f"line {line}: longer than {MAX_LINE_BYTES} bytes, skipped unread")
                continue
            if line == 1:
                text = text.removeprefix(BOM)
            if text.strip():
                yield QueryLine(line, text.rstrip(_JSON_WHITESPACE), note=note)
                note = ""


def _first_character(handle: IO[bytes]) -> bytes:
    """The first byte of ``handle`` after a byte-order mark and JSON's whitespace; empty for none."""
    chunk = handle.read(_SKIP_BYTES).removeprefix(BOM)
    while chunk:
        if rest := chunk.lstrip(_JSON_WHITESPACE):
            return rest[:1]
        chunk = handle.read(_SKIP_BYTES)
    return b""


def _first_line_is_no_array(data: bytes) -> bool:
    """Whether the first line of ``data`` (which starts with ``[``) shows that ``data`` is not one JSON array:
    the array closes on that line with more to come, or the line goes wrong before its end. A line that
    ends with the array still open, or longer than MAX_LINE_BYTES, shows nothing."""
    data = data.lstrip(_JSON_WHITESPACE)
    end = data.find(b"\n", 0, MAX_LINE_BYTES + 1)
    if end < 0:
        return False
    try:  # a newline never cuts a UTF-8 sequence, and no JSON string spans lines
        text = data[:end].decode("utf-8").rstrip()
        json.JSONDecoder(parse_constant=_refuse_constant).raw_decode(text)
    except json.JSONDecodeError as error:
        return error.pos < len(text)  # wrong before the line's end, or still open at it
    except (UnicodeDecodeError, RecursionError, ValueError):  # no JSON that Python reads: never a list
        pass
    return True


def _annotation_list(path: Path) -> list | QueryError | str:
    """The entries of ``path`` if the whole file is one JSON array; a ``list_too_large`` error if it may be
    one but is too large to read; else it is JSON lines, and the str says why where it starts with ``[``
    (empty where it does not)."""
    with open(path, "rb") as handle:
        if _first_character(handle) != b"[":
            return ""
        handle.seek(0)
        data = handle.read(MAX_LIST_BYTES + 1)
    if len(data) > MAX_LIST_BYTES:
        if _first_line_is_no_array(data.removeprefix(BOM)):
            return (f"the file is read one record a line, since it is larger than {MAX_LIST_BYTES} bytes and its "
                    "first line is not the start of one JSON array")
        return QueryError(None, 1, "list_too_large",
                          f"{path}: an annotation list larger than {MAX_LIST_BYTES} bytes is not read; give its "
                          "queries as JSON lines")
    try:
        return _load_json(data.removeprefix(BOM), "as a whole")
    except InputError as error:
        return f"the file is read one record a line, since it is not one JSON array ({error.message})"


def read_lines(path: str | Path) -> Iterator[QueryLine | QueryError]:
    """The entries of ``path`` in file order, unparsed: an annotation list's, or each non-blank line's (the
    first of a file that starts with ``[`` noting why it is not read as a list)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"queries file {path} does not exist")
    found = _annotation_list(path)
    if isinstance(found, str):
        return _json_lines(path, found)
    if isinstance(found, QueryError):
        return iter([found])
    return (QueryLine(index + 1, entry, annotation=True) for index, entry in enumerate(found))


def read_queries(path: str | Path) -> Iterator[Query | QueryError]:
    """The queries of ``path`` in file order, each parsed."""
    return (parse(item) if isinstance(item, QueryLine) else item for item in read_lines(path))


def count_queries(path: str | Path) -> int:
    """How many results ``path`` gives (non-blank lines, or list entries, or the one error of a list too large
    to read), for a progress bar's total."""
    return sum(1 for _ in read_lines(path))


def as_lines(source: str | Path | Iterable[Query | QueryError | dict]) -> Iterator[QueryLine | Query | QueryError]:
    """A queries file's entries, or records given in Python (dicts as in JSON lines, numbered from line 1)."""
    if isinstance(source, (str, Path)):
        yield from read_lines(source)
        return
    for line, item in enumerate(source, start=1):
        yield item if isinstance(item, (Query, QueryError)) else QueryLine(line, item)
