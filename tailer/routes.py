"""Request checks and routing, kept free of sockets so they are easy to test.

Everything here is a pure function of the request line and headers:
which ``Host`` and ``Origin`` values are allowed, whether a token was
presented, what a path means (:class:`Route`), and where a ``/static/`` path
lands on disk. :mod:`tailer.server` calls them from websockets'
``process_request`` hook, before any filesystem access.
"""

from __future__ import annotations

import hmac
import ipaddress
import math
import mimetypes
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from recorder.format import is_valid_experiment_id

__all__ = [
    "LOOPBACK_NAMES",
    "RequestError",
    "Route",
    "content_type",
    "host_allowed",
    "is_loopback_host",
    "origin_allowed",
    "parse_speed",
    "parse_ws_route",
    "single_header",
    "split_target",
    "static_file",
    "token_presented",
]

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "localhost.localdomain"})
TOKEN_COOKIE = "tailer_token"


class _Headers(Protocol):
    def get_all(self, key: str) -> list[str]: ...


class RequestError(Exception):
    """A request refused with an HTTP status and a one-line reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


# --------------------------------------------------------------------------- hosts


def is_loopback_host(host: str) -> bool:
    """Whether a bind address or host name means this machine only."""
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_name(header: str) -> str | None:
    """The name in a ``Host`` header, without port or brackets, lower-cased."""
    header = header.strip().lower()
    if not header:
        return None
    if header.startswith("["):
        end = header.find("]")
        if end < 0:
            return None
        rest = header[end + 1 :]
        if rest and not (rest.startswith(":") and rest[1:].isdigit()):
            return None
        return header[1:end]
    name, _, port = header.partition(":")
    if port and not port.isdigit():
        return None
    return name.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def host_allowed(header: str | None, served_host: str, extra: Iterable[str] = ()) -> bool:
    """The DNS-rebinding check on a request's ``Host`` header.

    Allowed: loopback names and addresses, the address being served, names
    added with ``--allow-host`` (``*`` allows any), and, when bound to every
    interface (``0.0.0.0``/``::``), any IP literal (a rebinding attack needs a
    DNS name, so literals are safe).
    """
    if header is None:
        return False
    name = _host_name(header)
    if name is None:
        return False
    extra_names = {e.strip("[]").lower().rstrip(".") for e in extra}
    if "*" in extra_names or name in extra_names:
        return True
    if is_loopback_host(name):
        return True
    served = served_host.strip("[]").lower()
    if name == served:
        return True
    return served in ("", "0.0.0.0", "::") and _is_ip(name)


def origin_allowed(origin: str | None, extra: Iterable[str] = ()) -> bool:
    """Whether a browser ``Origin`` may open a connection.

    No ``Origin`` (scripts, curl, the React client's server side) is allowed;
    so are ``http(s)://localhost``, ``127.0.0.1`` and ``[::1]`` on any port,
    and exact matches of ``--allow-origin`` values (``*`` allows all).
    """
    if origin is None:
        return True
    normalised = origin.strip().rstrip("/").lower()
    extras = {e.strip().rstrip("/").lower() for e in extra}
    if "*" in extras or normalised in extras:
        return True
    try:
        parts = urlsplit(normalised)
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or parts.path or parts.query:
        return False
    return (parts.hostname or "") in ("localhost", "127.0.0.1", "::1")


# --------------------------------------------------------------------------- tokens


def token_presented(
    expected: str,
    query: Mapping[str, list[str]],
    authorization: str | None,
    cookie: str | None,
) -> bool:
    """Whether the request carries ``expected`` (compared in constant time)."""
    want = expected.encode("utf-8")
    candidates: list[str] = list(query.get("token", []))
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer":
            candidates.append(value.strip())
    if cookie:
        for part in cookie.split(";"):
            name, _, value = part.strip().partition("=")
            if name == TOKEN_COOKIE:
                candidates.append(unquote(value))
    ok = False
    for candidate in candidates:
        ok |= hmac.compare_digest(candidate.encode("utf-8", "surrogateescape"), want)
    return ok


# --------------------------------------------------------------------------- routes


def single_header(headers: _Headers, name: str) -> str | None:
    """The one value of header ``name`` (None if absent); 400 if it came more than once.

    Two ``Host``, ``Origin`` or ``Authorization`` headers are ambiguous (which
    one did the proxy check?): the request is refused rather than guessed at.
    """
    values = headers.get_all(name)
    if len(values) > 1:
        raise RequestError(400, f"more than one {name} header")
    return values[0] if values else None


def split_target(target: str) -> tuple[str, dict[str, list[str]]]:
    """``(raw path, query)`` of a request target; the path stays percent-encoded.

    Only the origin form (``/path?query``) of printable ASCII is a request
    target here; anything else (raw bytes over 0x7f, control characters, an
    absolute URL, ``//[``) is a 400.
    """
    if not target.startswith("/") or not target.isascii() or not target.isprintable():
        raise RequestError(400, "malformed request target")
    try:
        parts = urlsplit(target)
    except ValueError:
        raise RequestError(400, "malformed request target") from None
    try:
        query = parse_qs(parts.query, keep_blank_values=True, max_num_fields=32)
    except ValueError:
        raise RequestError(400, "too many query parameters") from None
    return parts.path or "/", query


@dataclass(frozen=True)
class Route:
    """What a WebSocket request asks for."""

    kind: str  # "firehose", "experiment" or "replay"
    experiment_id: str | None = None
    since: int | None = None
    speed: float = 1.0
    max_gap: float | None = None
    #: A replay that stays open after ``replay_end`` until the client leaves (``/`` under
    #: ``tailer replay``, DESIGN §11) instead of closing with 1000.
    stay_open: bool = False


def _one(query: Mapping[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None


def _parse_since(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        since = int(value)
    except ValueError:
        raise RequestError(400, f"since must be an integer >= -1, not {value[:40]!r}") from None
    if since < -1:
        raise RequestError(400, f"since must be an integer >= -1, not {since}")
    return since


def _parse_float(
    name: str, value: str | None, default: float | None, *, positive: bool
) -> float | None:
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number < 0 or (positive and number == 0):
        bound = "> 0" if positive else ">= 0"
        raise RequestError(400, f"{name} must be a finite number {bound}, not {value[:40]!r}")
    return number


def parse_speed(value: str) -> float:
    """A replay ``speed`` parameter: a finite number >= 0 (0: no waiting)."""
    speed = _parse_float("speed", value, 1.0, positive=False)
    assert speed is not None
    return speed


def _experiment_segment(raw: str) -> str:
    experiment_id = unquote(raw)
    if not is_valid_experiment_id(experiment_id):
        raise RequestError(404, "no such experiment")
    return experiment_id


def parse_ws_route(path: str, query: Mapping[str, list[str]]) -> Route:
    """Interpret a WebSocket request path; invalid ids give 404, bad parameters 400.

    The path is split on ``/`` *before* percent-decoding, so ``%2F`` can never
    introduce a separator, and every id is validated before anything touches
    the filesystem.
    """
    segments = path.split("/")[1:]
    if segments == [""]:
        experiment = _one(query, "experiment")
        since = _parse_since(_one(query, "since"))
        if experiment is not None and experiment != "":
            if not is_valid_experiment_id(experiment):
                raise RequestError(404, "no such experiment")
            return Route("firehose", experiment, since)
        if since is not None:
            raise RequestError(400, "since needs experiment=ID (numbering is per experiment)")
        return Route("firehose")
    if len(segments) == 2 and segments[0] == "experiments":
        since = _parse_since(_one(query, "since"))
        return Route("experiment", _experiment_segment(segments[1]), -1 if since is None else since)
    if len(segments) == 3 and segments[0] == "experiments" and segments[2] == "replay":
        return Route(
            "replay",
            _experiment_segment(segments[1]),
            speed=parse_speed(_one(query, "speed") or ""),
            max_gap=_parse_float("max_gap", _one(query, "max_gap"), None, positive=True),
        )
    raise RequestError(404, "no such endpoint")


# --------------------------------------------------------------------------- static files

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
    ".ts": "text/plain; charset=utf-8",  # runtail-client.d.ts, not video/mp2t
    ".woff2": "font/woff2",
}


def content_type(path: Path) -> str:
    """The ``Content-Type`` for a static file."""
    suffix = path.suffix.lower()
    if suffix in _TYPES:
        return _TYPES[suffix]
    guessed, _ = mimetypes.guess_type(path.name)
    return guessed or "application/octet-stream"


def static_file(root: Path, raw_rel: str) -> Path:
    """The file under ``root`` that ``/static/<raw_rel>`` names; 404 for anything else.

    Refuses ``..`` segments (encoded or not), absolute paths, backslashes, NUL
    and hidden files, then checks that the resolved path (symlinks followed)
    is still inside ``root``.
    """
    rel = unquote(raw_rel)
    segments = rel.split("/")
    if (
        not rel
        or "\\" in rel
        or "\x00" in rel
        or any(s in ("", ".", "..") or s.startswith(".") for s in segments)
        or len(rel) > 512
    ):
        raise RequestError(404, "not found")
    root = root.resolve()
    try:
        candidate = (root / rel).resolve()
    except (OSError, RuntimeError):
        raise RequestError(404, "not found") from None
    if not candidate.is_relative_to(root) or not candidate.is_file():
        raise RequestError(404, "not found")
    return candidate
