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

import hashlib
import io
import itertools
import json
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

from cnm_runtime.errors import InputError, shown
from cnm_runtime.fields import check_duration, check_text, check_timestamps, check_video, parse_annotation
from cnm_runtime.outcomes import QueryError, contained

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
    Never raises: parsing runs inside ``outcomes.contained``, the boundary of one entry.
    """
    query = contained(lambda: _query(item), f"line {item.line}")
    if isinstance(query, InputError):
        return QueryError(None, item.line, query.code, f"{query.message}; {item.note}" if item.note else query.message)
    return query


def _query(item: QueryLine) -> Query:
    if item.annotation:
        return _annotation_query(item.content, item.line)
    content = _load_json(item.content, f"line {item.line}") if isinstance(item.content, bytes) else item.content
    return query_from_record(content, item.line)


def _bounded_lines(handle: IO[bytes]) -> Iterator[bytes | None]:
    """The lines of ``handle``, None for each longer than MAX_LINE_BYTES (read on to its end in pieces)."""
    while text := handle.readline(MAX_LINE_BYTES + 1):
        if len(text) <= MAX_LINE_BYTES or text.endswith(b"\n"):
            yield text
            continue
        while (rest := handle.readline(_SKIP_BYTES)) and not rest.endswith(b"\n"):
            pass
        yield None


def _json_lines(stream: IO[bytes], note: str = "") -> Iterator[QueryLine | QueryError]:
    """Every non-blank line of ``stream``, the first with ``note``."""
    for line, text in enumerate(_bounded_lines(stream), start=1):
        if text is None:
            yield QueryError(None, line, "line_too_long",
                             f"line {line}: longer than {MAX_LINE_BYTES} bytes, skipped unread")
            continue
        if line == 1:
            text = text.removeprefix(BOM)
        if text.strip():
            yield QueryLine(line, text.rstrip(_JSON_WHITESPACE), note=note)
            note = ""


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


class _Replay(io.RawIOBase):
    """``head`` (bytes already read from ``stream``) and then the rest of ``stream``: a pipe cannot seek back."""

    def __init__(self, head: bytes, stream: IO[bytes]):
        self._head, self._stream = memoryview(head), stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._head:
            size = min(len(buffer), len(self._head))
            buffer[:size], self._head = self._head[:size], self._head[size:]
            return size
        return self._stream.readinto(buffer)


def _entries(stream: IO[bytes], name: str) -> Iterator[QueryLine | QueryError]:
    """The entries of the queries in ``stream``, read once: an annotation list's if the whole of it is one JSON
    array (kept in memory, at most MAX_LIST_BYTES), else each non-blank line's (the first of a stream that
    starts with ``[`` noting why it is not read as a list)."""
    head = b""
    while len(head) <= MAX_LIST_BYTES and (chunk := stream.read(_SKIP_BYTES)):
        head += chunk
        if head.removeprefix(BOM).lstrip(_JSON_WHITESPACE):
            break
    if not head.removeprefix(BOM).lstrip(_JSON_WHITESPACE).startswith(b"["):
        yield from _json_lines(io.BufferedReader(_Replay(head, stream)))
        return
    data = head + stream.read(max(0, MAX_LIST_BYTES + 1 - len(head)))
    if len(data) > MAX_LIST_BYTES:
        if not _first_line_is_no_array(data[: MAX_LIST_BYTES + 1].removeprefix(BOM)):  # as much as a list may be
            yield QueryError(None, 1, "list_too_large", f"{name}: an annotation list larger than {MAX_LIST_BYTES} "
                                                         "bytes is not read; give its queries as JSON lines")
            return
        note = (f"the file is read one record a line, since it is larger than {MAX_LIST_BYTES} bytes and its "
                "first line is not the start of one JSON array")
        yield from _json_lines(io.BufferedReader(_Replay(data, stream)), note)
        return
    try:
        found = _load_json(data.removeprefix(BOM), "as a whole")
    except InputError as error:  # the whole stream is in ``data``
        note = f"the file is read one record a line, since it is not one JSON array ({error.message})"
        yield from _json_lines(io.BytesIO(data), note)
        return
    yield from (QueryLine(index + 1, entry, annotation=True) for index, entry in enumerate(found))


class _Hashing(io.RawIOBase):
    """A raw stream whose bytes go into ``digest`` as they are read."""

    def __init__(self, raw: IO[bytes], digest: Any):
        self._raw, self.digest = raw, digest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        size = self._raw.readinto(buffer)
        self.digest.update(memoryview(buffer)[:size])
        return size


class QueriesFile:
    """A queries file, or a pipe, whose entries a run reads once.

    ``scan()`` reads a file's bytes once for its SHA-256 (what the run's provenance records) and the number of
    entries (the progress bar's total); an annotation list, parsed for that, is kept, so ``entries()`` does not
    read it again. JSON lines are read again by ``entries()``, one at a time, so memory stays bounded. A pipe
    can be read only once: it has no scan, and ``entries()`` streams it.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            mode = self.path.stat().st_mode
        except OSError as error:
            raise FileNotFoundError(f"queries file {self.path} cannot be read ({error.strerror})") from None
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(f"queries file {self.path} is a folder")
        self.seekable = stat.S_ISREG(mode)
        self._kept: list[QueryLine | QueryError] | None = None

    def scan(self) -> tuple[int | None, str | None]:
        """``(entries, SHA-256)`` of a file; ``(None, None)`` for a pipe."""
        if not self.seekable:
            return None, None
        digest = hashlib.sha256()
        with open(self.path, "rb", buffering=0) as raw:
            stream = io.BufferedReader(_Hashing(raw, digest), buffer_size=1 << 20)
            entries = _entries(stream, str(self.path))
            first = next(entries, None)
            if isinstance(first, QueryLine) and first.annotation:  # a list, parsed whole: kept for entries()
                self._kept = [first, *entries]
                count = len(self._kept)
            else:
                count = (first is not None) + sum(1 for _ in entries)
            while stream.read(1 << 20):  # what was left unread (a list too large to read) is hashed too
                pass
        return count, digest.hexdigest()

    def entries(self) -> Iterator[QueryLine | QueryError]:
        """The entries in file order, unparsed."""
        if self._kept is not None:
            yield from self._kept
            return
        with open(self.path, "rb") as stream:
            yield from _entries(stream, str(self.path))


def read_lines(path: str | Path) -> Iterator[QueryLine | QueryError]:
    """The entries of the queries file ``path`` in file order, unparsed."""
    return QueriesFile(path).entries()


def read_queries(path: str | Path) -> Iterator[Query | QueryError]:
    """The queries of ``path`` in file order, each parsed."""
    return (parse(item) if isinstance(item, QueryLine) else item for item in read_lines(path))


def count_queries(path: str | Path) -> int | None:
    """How many results ``path`` gives (non-blank lines, or list entries, or the one error of a list too large
    to read); None for a pipe."""
    return QueriesFile(path).scan()[0]


def as_lines(source: str | Path | Iterable[Query | QueryError | dict]) -> Iterator[QueryLine | Query | QueryError]:
    """A queries file's entries, or records given in Python (dicts as in JSON lines, numbered from line 1)."""
    if isinstance(source, (str, Path)):
        yield from read_lines(source)
        return
    for line, item in enumerate(source, start=1):
        yield item if isinstance(item, (Query, QueryError, QueryLine)) else QueryLine(line, item)
