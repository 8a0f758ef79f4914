"""WebSocket text frames built once per message and shared by every client.

Server-to-client frames are never masked and the tailer turns compression
off, so the bytes of a frame do not depend on the connection: the fan-out frames
each message once and writes the same bytes to every subscriber's transport.
Pure functions, no I/O.
"""

from __future__ import annotations

import struct

from recorder.format import wire_payloads

__all__ = ["PONG_FRAME", "frame_lines", "text_frame"]

_pack_short = struct.Struct("!BBH").pack
_pack_long = struct.Struct("!BBQ").pack


def text_frame(payload: bytes) -> bytes:
    """One unmasked, final WebSocket text frame (RFC 6455 §5.2) carrying ``payload``."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return _pack_short(0x81, 126, n) + payload
    return _pack_long(0x81, 127, n) + payload


# Headers of frames shorter than 64 KiB, built on first use (at most 64 Ki small objects).
_HEADERS: list[bytes | None] = [bytes((0x81, n)) for n in range(126)] + [None] * (65536 - 126)


def frame_lines(lines: list[tuple[int, bytes]], experiment_id: str) -> bytes:
    """The frames of ``(seq, line)`` pairs of one experiment, joined into one buffer.

    Each line becomes its wire message (:func:`recorder.format.wire_payloads`) in
    its own text frame; the frames are concatenated so a batch costs one
    ``transport.write`` per client. This is the hot path of history catch-up,
    hence the cached headers and local names.
    """
    parts: list[bytes] = []
    append = parts.append
    headers = _HEADERS
    for payload in wire_payloads(lines, experiment_id):
        n = len(payload)
        if n < 65536:
            header = headers[n]
            if header is None:
                header = headers[n] = _pack_short(0x81, 126, n)
            append(header)
        else:
            append(_pack_long(0x81, 127, n))
        append(payload)
    return b"".join(parts)


PONG_FRAME = text_frame(b'{"type":"pong","data":{}}')
