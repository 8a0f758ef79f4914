"""The runtail log format: one JSON object per line, one file per experiment.

This module is the only place that knows how a message becomes a line and a
line becomes a message. :mod:`tailer` and :mod:`replay` import it; nothing
re-implements it: :class:`recorder.MetricsRecorder` writes what
:func:`encode_message` returns, and :func:`encode_line` is the one encoder.

A line is ``{"type": str, "timestamp": str, "data": object, ...}`` followed by
exactly one ``\\n``. Timestamps are RFC 3339 UTC ending in ``Z``, recorded to
the millisecond as the setup runtail replaces wrote them
(``2025-10-22T11:10:16.371Z``); readers accept any precision. Non-finite
floats are written as the strings ``"NaN"``, ``"Infinity"`` and
``"-Infinity"`` (valid JSON for every parser); :func:`restore_non_finite`
turns them back into floats. Tensors and numpy scalars become Python numbers;
anything else that JSON cannot hold is written as its ``str()`` with one
warning per type.

On the wire the tailer sends the recorded object plus ``experiment_id`` and
``seq``; :func:`wire_payload` splices those two keys into the recorded bytes
instead of re-serialising the message.
"""

from __future__ import annotations

import functools
import math
import re
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import orjson

_time_ns = time.time_ns
_dumps = orjson.dumps

__all__ = [
    "EXPERIMENT_ID_PATTERN",
    "INDEX_KEYS",
    "MAX_LINE_BYTES",
    "NON_FINITE",
    "RANK_SUFFIX",
    "RUN_FILE_SUFFIX",
    "STATUS_OF_TYPES",
    "STATUS_TYPES",
    "LineBuffer",
    "MalformedLine",
    "decode_line",
    "encode_line",
    "encode_message",
    "experiment_id_of",
    "format_timestamp",
    "is_blank_line",
    "is_valid_experiment_id",
    "named_file_id",
    "parse_timestamp",
    "rank_file_id",
    "rank_suffix",
    "restore_non_finite",
    "run_file_name",
    "split_lines",
    "split_rank",
    "status_of",
    "to_python",
    "utc_timestamp",
    "validate_experiment_id",
    "validate_run_id",
    "wire_payload",
    "wire_payloads",
]

#: What every run file's name ends in: ``<experiment_id>.jsonl``.
RUN_FILE_SUFFIX = ".jsonl"

#: What an experiment id may look like; it is also the file's stem.
EXPERIMENT_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

#: The suffix of a per-rank file's id: ``<run>.rank<N>`` is rank N of run ``<run>``.
RANK_SUFFIX = re.compile(r"\.rank([0-9]+)\Z")

#: Lines longer than this (without the newline) are malformed for readers.
MAX_LINE_BYTES = 1 << 20

#: How non-finite floats are spelled in a line, and what they read back as.
NON_FINITE: dict[str, float] = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}

#: Keys of a message's ``data`` (and of ``data.metrics``) that index a value rather
#: than being one: replay's tables make no metric rows of them, and the tailer
#: serves them to the dashboard (``/api/schema``) so it charts the same values.
INDEX_KEYS = frozenset(
    {
        "epoch",
        "step",
        "round",
        "round_num",
        "total_epochs",
        "total_rounds",
        "batch_idx",
        "local_epoch",
        "client_id",
        "rank",
    }
)

#: Message types whose arrival says what state a run is in.
STATUS_TYPES = frozenset({"status", "training_end", "error"})

_DUMPS_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_APPEND_NEWLINE
# The fast path leaves out OPT_NON_STR_KEYS (it costs more than half a dumps):
# a non-string key makes orjson raise, and the sanitising path turns keys into str.
_FAST_OPTIONS = orjson.OPT_APPEND_NEWLINE


class MalformedLine(ValueError):
    """A line that is not a runtail message: bad JSON, not an object, no string ``type``."""


# --------------------------------------------------------------------------- ids


def is_valid_experiment_id(experiment_id: object) -> bool:
    """Whether ``experiment_id`` is a safe experiment id (and so a safe file stem)."""
    return (
        isinstance(experiment_id, str)
        and EXPERIMENT_ID_PATTERN.fullmatch(experiment_id) is not None
    )


def experiment_id_of(name: str) -> str | None:
    """The experiment id a run file's name gives, or ``None`` if it names no run.

    ``a.jsonl`` → ``"a"``, ``a.rank3.jsonl`` → ``"a.rank3"`` (:func:`split_rank`
    parts it), ``notes.txt`` or ``.jsonl`` → ``None``. ``name`` is a bare file
    name: which files count (regular files, symlinks, FIFOs) is the caller's rule.
    """
    if name.endswith(RUN_FILE_SUFFIX):
        stem = name[: -len(RUN_FILE_SUFFIX)]
        if is_valid_experiment_id(stem):
            return stem
    return None


def run_file_name(experiment_id: str) -> str:
    """The name of the file that holds run (or per-rank file) ``experiment_id``: ``<id>.jsonl``."""
    return experiment_id + RUN_FILE_SUFFIX


def named_file_id(name: str) -> str:
    """The experiment id of a file named explicitly (``tailer replay FILE``): ``name`` less ``.jsonl``.

    Unlike :func:`experiment_id_of`, any name gives an id (``a.log`` stays
    ``a.log``): a file the user names is read whatever it is called; the
    caller validates the id.
    """
    return name.removesuffix(RUN_FILE_SUFFIX)


def validate_experiment_id(experiment_id: object) -> str:
    """Return ``experiment_id`` unchanged, or raise :class:`ValueError` naming it.

    Ids become file names, so anything that could leave the log directory
    (``../x``, ``a/b``), an empty id and ids over 128 characters are refused.
    """
    if not is_valid_experiment_id(experiment_id):
        raise ValueError(
            f"invalid experiment id {experiment_id!r}: expected 1-128 characters of "
            "letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return experiment_id  # type: ignore[return-value]


# One rule, here only: a file's id is ``<run>`` or ``<run>.rank<N>``. On the wire
# and in ``/api/experiments`` every file keeps its own id; ``run``/``rank`` (the
# tailer's listings) and replay's tables group a run's per-rank files.


def validate_run_id(run_id: object) -> str:
    """Return ``run_id`` unchanged if it may name a run, else raise :class:`ValueError`.

    A run id is a valid experiment id that does not itself end in
    ``.rank<digits>``: that suffix is how per-rank files name their rank
    (:func:`rank_file_id`), so ``a.rank1`` could not be told from rank 1 of ``a``.
    """
    run_id = validate_experiment_id(run_id)
    if RANK_SUFFIX.search(run_id) is not None:
        raise ValueError(
            f"invalid experiment id {run_id!r}: an id may not end in '.rank<digits>' "
            "(per-rank files are named <id>.rank<N>; pass per_rank=True instead)"
        )
    return run_id


def rank_suffix(rank: int) -> str:
    """What a per-rank file's id adds to its run's: ``.rank<rank>``."""
    return f".rank{int(rank)}"


def rank_file_id(run_id: str, rank: int) -> str:
    """The id (file stem) of rank ``rank``'s file of run ``run_id``: ``<run_id>.rank<rank>``."""
    return validate_experiment_id(run_id + rank_suffix(rank))


def split_rank(experiment_id: str) -> tuple[str, int | None]:
    """The run and rank a file's id names: ``a.rank3`` → ``("a", 3)``, ``a`` → ``("a", None)``."""
    found = RANK_SUFFIX.search(experiment_id)
    if found is None:
        return experiment_id, None
    return experiment_id[: found.start()], int(found.group(1))


# --------------------------------------------------------------------------- timestamps

# strftime costs more than the rest of a message, so formatted times are
# cached: the second for format_timestamp, the whole millisecond stamp for
# utc_timestamp (messages come far faster than one per millisecond). Each
# cache is one tuple swapped in whole, so a thread never pairs a key with
# another key's text.
_second_prefix: tuple[int, str] = (-1, "")
_milli_stamp: tuple[int, int, str] = (0, 0, "")  # [start, end) in ns, and its text


def _prefix_of(whole: int) -> str:
    global _second_prefix
    cached = _second_prefix
    if cached[0] != whole:
        cached = _second_prefix = (whole, time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(whole)))
    return cached[1]


def _stamp_at(now_ns: int) -> str:
    """The timestamp text of a POSIX time in ns, to the millisecond; cached until the next one."""
    global _milli_stamp
    millis = now_ns // 1_000_000
    seconds, fraction = divmod(millis, 1000)
    text = "%s%03dZ" % (_prefix_of(seconds), fraction)  # noqa: UP031 (faster than format)
    _milli_stamp = (millis * 1_000_000, (millis + 1) * 1_000_000, text)
    return text


def format_timestamp(seconds: float) -> str:
    """RFC 3339 UTC with microseconds for a POSIX time, e.g. ``2025-10-22T11:10:16.371000Z``."""
    whole = math.floor(seconds)
    micros = round((seconds - whole) * 1_000_000)
    if micros >= 1_000_000:  # rounding carried into the next second
        whole, micros = whole + 1, micros - 1_000_000
    return "%s%06dZ" % (_prefix_of(whole), micros)  # noqa: UP031 (faster than format)


def utc_timestamp() -> str:
    """The current time as a runtail timestamp, to the millisecond: ``2025-10-22T11:10:16.371Z``.

    Milliseconds, as the setup runtail replaces wrote them; a line's position
    in its file (``seq``) orders messages within one millisecond.
    """
    now = _time_ns()
    cached = _milli_stamp
    return cached[2] if cached[0] <= now < cached[1] else _stamp_at(now)


def parse_timestamp(text: str) -> datetime:
    """Parse a runtail timestamp (any RFC 3339 form) into an aware UTC datetime."""
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


# --------------------------------------------------------------------------- encoding

_warned_types: set[str] = set()
_warned_lock = threading.Lock()


def _warn_unserialisable(value: object) -> None:
    name = f"{type(value).__module__}.{type(value).__qualname__}"
    with _warned_lock:
        if name in _warned_types:
            return
        _warned_types.add(name)
    warnings.warn(
        f"runtail: a value of type {name} is not JSON; it is recorded as its str()",
        RuntimeWarning,
        stacklevel=4,
    )


def _to_number(value: Any) -> Any:
    """Tensors and numpy values to Python numbers or lists; ``None`` if not one of them."""
    tolist = getattr(value, "tolist", None)
    if tolist is not None and (hasattr(value, "dtype") or hasattr(value, "numel")):
        try:
            return tolist()  # a 0-d tensor or numpy scalar gives a plain number
        except Exception:
            return None
    item = getattr(value, "item", None)
    if item is not None:
        try:
            return item()
        except Exception:
            return None
    return None


def to_python(value: Any) -> Any:
    """``value`` as plain Python: a 0-d tensor or numpy scalar becomes a number, arrays lists.

    Anything else is returned unchanged. Use it to snapshot metric tensors that
    the training loop will go on mutating.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    converted = _to_number(value)
    return value if converted is None else converted


def _default(value: Any) -> Any:
    """orjson's hook for types it does not know."""
    converted = _to_number(value)
    if converted is not None:
        return converted
    if isinstance(value, (set, frozenset)):
        return list(value)
    _warn_unserialisable(value)
    return str(value)


def _utf8_safe(text: str) -> str:
    """``text``, with lone surrogates (which cannot be UTF-8) replaced by ``?``."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def _key_text(key: Any) -> str:
    """A non-string key as JSON text: ``true``/``false``/``null`` like orjson, else ``str()``."""
    if key is True or key is False or key is None:
        return "true" if key else ("null" if key is None else "false")
    return str(key)


def _sanitise(value: Any, depth: int = 0) -> Any:
    """A pure-JSON copy of ``value``: non-finite floats as strings, keys as str."""
    if depth > 200:
        return str(value)
    if isinstance(value, str):
        return _utf8_safe(value)
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, Mapping):
        return {
            _utf8_safe(k if isinstance(k, str) else _key_text(k)): _sanitise(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_sanitise(v, depth + 1) for v in value]
    converted = _to_number(value)
    if converted is not None:
        return _sanitise(converted, depth + 1)
    _warn_unserialisable(value)
    return _sanitise(str(value), depth + 1)


def _has_non_finite(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` holds a float that orjson would have written as ``null``."""
    if isinstance(value, float):
        return value != value or value in (math.inf, -math.inf)
    if isinstance(value, (str, int)) or value is None:
        return False
    if depth > 200:
        return True  # let the sanitising path decide
    if isinstance(value, Mapping):
        return any(_has_non_finite(v, depth + 1) for v in value.values())
    if isinstance(value, (list, tuple, set, frozenset)):
        return any(_has_non_finite(v, depth + 1) for v in value)
    converted = _to_number(value)
    return converted is not None and _has_non_finite(converted, depth + 1)


def _encode_sanitised(message: Mapping[str, Any]) -> bytes:
    """The slow path: a sanitised copy, so no value can make the line invalid."""
    clean = _sanitise(message)
    try:
        return orjson.dumps(clean, option=_DUMPS_OPTIONS)
    except (orjson.JSONEncodeError, TypeError):  # integers beyond 64 bits, deep nesting
        import json

        return (
            json.dumps(clean, ensure_ascii=False, separators=(",", ":"), allow_nan=False) + "\n"
        ).encode("utf-8")


def encode_line(message: Mapping[str, Any]) -> bytes:
    """Encode one message object as exactly one line of UTF-8 JSON ending in ``\\n``.

    Never raises for odd values: see the module docstring for what they become.
    """
    try:
        line = _dumps(message, default=_default, option=_FAST_OPTIONS)
    except (orjson.JSONEncodeError, TypeError):
        # Non-string keys, integers beyond 64 bits, lone surrogates, deep nesting.
        return _encode_sanitised(message)
    # orjson writes NaN and the infinities as null. A null may also be a None
    # (or the text "null" inside a string), so only a real non-finite float
    # takes the slow path; the substring search (rfind: the
    # quickest of CPython's searches here) costs far less than a parse.
    if line.rfind(b"null") >= 0 and _has_non_finite(message):
        return _encode_sanitised(message)
    return line


def encode_message(
    type: str,
    data: Any = None,
    *,
    timestamp: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> bytes:
    """Build and encode a message ``{"type", "timestamp", "data", **extra}`` as one line.

    Keys of ``extra`` never replace ``type``, ``timestamp`` or ``data``. This
    is what :meth:`recorder.MetricsRecorder.record` writes.
    """
    message: dict[str, Any] = {
        "type": type,
        "timestamp": utc_timestamp() if timestamp is None else timestamp,
        "data": {} if data is None else data,
    }
    if extra:
        for key, value in extra.items():
            message.setdefault(key, value)
    return encode_line(message)


# --------------------------------------------------------------------------- decoding


def decode_line(line: bytes | str, *, max_bytes: int = MAX_LINE_BYTES) -> dict[str, Any]:
    """Decode one line (with or without its ``\\n``) into a message dict.

    Raises:
        MalformedLine: the line is longer than ``max_bytes``, is not JSON, is
            not an object, or has no string ``type``.
    """
    size = len(line)
    if line[-1:] in (b"\n", "\n"):
        size -= 1  # the limit is on the line itself, however its bytes arrived
    if size > max_bytes:
        raise MalformedLine(f"line of {size} bytes is over the limit of {max_bytes}")
    try:
        message = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise MalformedLine(f"not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise MalformedLine(f"not a JSON object but {type(message).__name__}")
    if not isinstance(message.get("type"), str):
        raise MalformedLine("no string 'type'")
    return message


def restore_non_finite(value: Any) -> Any:
    """Turn the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` back into floats, deeply."""
    if isinstance(value, str):
        return NON_FINITE.get(value, value)
    if isinstance(value, dict):
        return {k: restore_non_finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [restore_non_finite(v) for v in value]
    return value


def is_blank_line(line: bytes | bytearray) -> bool:
    """Whether ``line`` (without its ``\\n``) is empty or only ASCII whitespace.

    A blank line is not a message: every reader skips it silently, it is not
    malformed and takes no ``seq``.
    """
    return not line.strip()


def split_lines(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Split ``buffer`` into its complete lines (without ``\\n``) and the trailing rest.

    Blank lines (:func:`is_blank_line`) are left out. The rest is a line still
    being written (or torn by a crash): readers keep it until its newline
    arrives and never treat it as a message before that (:class:`LineBuffer`).
    """
    lines = buffer.split(b"\n")
    rest = lines.pop()  # after the last newline: all of buffer when it has none
    # One C-level pass finds out whether there is a blank line at all (rare).
    if b"" in map(bytes.strip, lines):
        lines = [line for line in lines if line.strip()]
    return lines, rest


class LineBuffer:
    """Bytes appended to a run file in, the raw bytes of its complete lines out; pure, no I/O.

    The one rule for how a growing file becomes lines, shared by the tailer
    (:class:`tailer.reader.LineSplitter`) and replay
    (:class:`replay._source.LineBlocks`): bytes after the last newline are
    held until their newline arrives (a line still being written, or torn by a
    crash: :attr:`torn`). A line that grows past ``max_line_bytes`` before its
    newline arrives is not held: its bytes are dropped as they come, and once
    its newline arrives :meth:`feed` reports it (it is malformed but, unless
    it was only whitespace, still a line that takes its ``seq``).
    """

    __slots__ = ("_rest", "_skip", "_skip_blank", "max_line_bytes")

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self.max_line_bytes = max_line_bytes
        self._rest = b""
        self._skip = -1  # bytes of an over-long line dropped so far, -1 when none
        self._skip_blank = False  # whether those bytes were all whitespace (a blank line)

    def feed(self, data: bytes) -> tuple[int, bool, bytes]:
        """Append ``data``; return ``(dropped, over_long, chunk)``.

        ``chunk`` is the raw bytes of the complete lines ``data`` finished, each
        ending in ``\\n``, blank ones included (``b""`` when none).
        ``dropped`` is how many bytes, newline included, of an over-long line
        ended just before ``chunk`` (0 when none); ``over_long`` says that line
        counts as a line (it was not only whitespace).
        """
        dropped, over_long = 0, False
        if self._skip >= 0:
            newline = data.find(b"\n")
            if newline < 0:
                self._skip_more(data)
                return 0, False, b""
            dropped, over_long = self._skip_end(data[:newline])
            data = data[newline + 1 :]
        if self._rest:
            data = self._rest + data
        end = data.rfind(b"\n") + 1
        self._hold(data[end:])
        return dropped, over_long, data[:end]

    def read(
        self, readinto: Callable[[memoryview], int | None], size: int
    ) -> tuple[int, int, bool, bytearray]:
        """Read up to ``size`` bytes with ``readinto`` (a binary file's) and feed them.

        Returns ``(read, dropped, over_long, chunk)``: ``read`` is how many
        bytes were read (0 at the end of the file), the rest as :meth:`feed`
        returns them, ``chunk`` as a ``bytearray``. The bytes are read in place
        after those held from the last call and the complete lines are cut off
        where they lie, so a large block is copied once, by the read, instead
        of three times.
        """
        held = len(self._rest)
        chunk = bytearray(held + size)
        chunk[:held] = self._rest
        with memoryview(chunk) as view, view[held:] as free:
            read = readinto(free) or 0
        del chunk[held + read :]
        dropped, over_long = 0, False
        if self._skip >= 0:  # nothing is held while an over-long line is dropped
            newline = chunk.find(b"\n")
            if newline < 0:
                self._skip_more(chunk)
                return read, 0, False, bytearray()
            dropped, over_long = self._skip_end(chunk[:newline])
            del chunk[: newline + 1]
        end = chunk.rfind(b"\n") + 1
        self._hold(bytes(chunk[end:]))
        del chunk[end:]
        return read, dropped, over_long, chunk

    def _hold(self, rest: bytes) -> None:
        """Keep ``rest`` (bytes after the last newline) for the next call, unless it is over-long."""
        if len(rest) > self.max_line_bytes:
            self._skip, self._skip_blank, rest = len(rest), is_blank_line(rest), b""
        self._rest = rest

    def _skip_more(self, data: bytes | bytearray) -> None:
        """``data`` has no newline: drop it, as part of the over-long line."""
        self._skip += len(data)
        self._skip_blank = self._skip_blank and is_blank_line(data)

    def _skip_end(self, last: bytes | bytearray) -> tuple[int, bool]:
        """The over-long line ends with ``last``: ``(dropped, over_long)`` as :meth:`feed` says."""
        dropped = self._skip + len(last) + 1
        over_long = not (self._skip_blank and is_blank_line(last))
        self._skip = -1
        return dropped, over_long

    @property
    def torn(self) -> bool:
        """Whether the bytes held since the last newline belong to a line (not only whitespace).

        A file that ends here ends in a torn line.
        """
        return not is_blank_line(self._rest) or (self._skip >= 0 and not self._skip_blank)


#: The message types :func:`status_of` looks at: for any other type it gives ``None``.
STATUS_OF_TYPES = frozenset(
    ("training_end", "error", "status", "training_start", "epoch_start", "round_start")
)


def status_of(message: Mapping[str, Any]) -> str | None:
    """The run status a message announces (``running``, ``completed``, ``failed``), if any."""
    kind = message.get("type")
    if kind == "training_end":
        return "completed"
    if kind == "error":
        return "failed"
    if kind == "status":
        data = message.get("data")
        status = data.get("status") if isinstance(data, dict) else None
        if status in ("completed", "failed", "running"):
            return status
        if status in ("started", "starting", "training", "in_progress"):
            return "running"
        if status in ("error", "crashed"):
            return "failed"
        if status in ("finished", "done", "success"):
            return "completed"
    if kind in ("training_start", "epoch_start", "round_start"):
        return "running"
    return None


# --------------------------------------------------------------------------- wire


def wire_payload(line: bytes, experiment_id: str, seq: int) -> bytes:
    """The payload of the text frame the tailer sends for a recorded line.

    That is the recorded object plus ``experiment_id`` and ``seq`` (framing it
    is :mod:`tailer.frames`' work).

    ``line`` must be a line that :func:`decode_line` accepted (so it is a JSON
    object); its bytes are kept and the two keys are appended before the
    closing brace. Keys appended last win in every JSON parser that accepts
    duplicates, so a recorded ``seq`` can never shadow the tailer's.
    ``experiment_id`` must already be valid (it then needs no escaping).
    """
    body = line.rstrip(b" \t\r\n")
    head = body[:-1].rstrip(b" \t\r\n")
    separator = b"" if head.endswith(b"{") else b","
    return b'%s%s"experiment_id":"%s","seq":%d}' % (
        head,
        separator,
        experiment_id.encode("ascii"),
        seq,
    )


#: Bytes that, just before a line's closing brace, make :func:`wire_payload` strip or
#: leave out the separator (whitespace, an empty object).
_NOT_PLAIN = frozenset(b" \t\r\n{")


@functools.lru_cache(maxsize=4096)
def _wire_middle(experiment_id: str) -> bytes:
    """What :func:`wire_payloads` puts between a line's last value and its ``seq``."""
    return b',"experiment_id":"%s","seq":' % experiment_id.encode("ascii")


def wire_payloads(pairs: Sequence[tuple[int, bytes]], experiment_id: str) -> list[bytes]:
    """:func:`wire_payload` of each ``(seq, line)``, the same bytes, for a whole batch at once.

    The history catch-up's hot path: a line that ends with ``}`` right after
    something other than whitespace or ``{`` (nearly every recorded line) is
    spliced with one formatting operation; any other goes through
    :func:`wire_payload`.
    """
    middle = _wire_middle(experiment_id)
    slow = _NOT_PLAIN
    if len(pairs) == 1:  # a live line: the comprehension would be one more call (3.11)
        ((seq, line),) = pairs
        if line[-1:] == b"}" and line[-2] not in slow:
            return [b"%s%s%d}" % (line[:-1], middle, seq)]
        return [wire_payload(line, experiment_id, seq)]
    return [
        b"%s%s%d}" % (line[:-1], middle, seq)
        if line[-1:] == b"}" and line[-2] not in slow
        else wire_payload(line, experiment_id, seq)
        for seq, line in pairs
    ]


def iter_messages(lines: Iterable[bytes]) -> Iterable[tuple[int, dict[str, Any] | None]]:
    """Number ``lines`` from 0 and decode each; malformed ones give ``None``, blank ones nothing."""
    seq = 0
    for line in lines:
        if is_blank_line(line):
            continue
        try:
            yield seq, decode_line(line)
        except MalformedLine:
            yield seq, None
        seq += 1
