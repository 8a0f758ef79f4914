"""Hostile requests against a live ``tailer serve``: paths, queries, Origin, Host, client frames.

One real server process for the module; hypothesis sends raw HTTP over a plain
socket (so nothing normalises the request first) and asserts after every
example that the process is alive, answered sensibly, and never returned the
secret planted outside the runs directory or any source file.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as sync_connect

from tests._reliability_helpers import env_without_tailer
from tests._tailer_helpers import ROOT

URL = re.compile(rb"on http://127\.0\.0\.1:(\d+)/")
SECRET = ("TOPSECRET-" + secrets.token_hex(8)).encode()


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A real ``tailer serve`` on a runs dir, with a secret run planted beside (not inside) it."""
    base = tmp_path_factory.mktemp("fuzzserver")
    runs = base / "runs"
    runs.mkdir()
    (base / "secret.jsonl").write_bytes(b'{"type":"secret","data":"' + SECRET + b'"}\n')
    (base / "secret").write_bytes(SECRET + b"\n")
    (runs / "ok.jsonl").write_bytes(b'{"type":"public","data":{}}\n')
    log = open(base / "serve.log", "wb")  # noqa: SIM115 - closed in the finaliser below
    proc = subprocess.Popen(
        [sys.executable, "-m", "tailer", "serve", str(runs), "--port", "0", "-q"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=log,
        env={**env_without_tailer(), "PYTHONUNBUFFERED": "1"},
    )
    try:
        line = proc.stdout.readline()
        match = URL.search(line)
        assert match, line
        yield proc, int(match.group(1)), base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        text = (base / "serve.log").read_text(errors="replace")
        assert "Traceback" not in text, text[-3000:]


def raw_request(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send ``data``; return everything the server answered before closing (or its 101 head).

    The write side stays open: websockets drops a connection whose peer half-closes
    before the answer is written.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(OSError):  # the server may close before reading everything
            sock.sendall(data)
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(1 << 16)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            chunks.append(chunk)
            head = b"".join(chunks)
            if head.startswith(b"HTTP/1.1 101") and b"\r\n\r\n" in head:
                break
        return b"".join(chunks)


def assert_healthy(proc: subprocess.Popen, port: int) -> None:
    assert proc.poll() is None, "the server died"
    answer = raw_request(port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]


def assert_nothing_leaked(answer: bytes) -> None:
    assert SECRET not in answer
    assert b"class TailerServer" not in answer  # tailer/server.py
    assert b"[project]" not in answer  # pyproject.toml
    assert b"root:x:0:0" not in answer  # /etc/passwd


_SEGMENTS = [
    "",
    ".",
    "..",
    "%2e%2e",
    "%2E%2e%2f",
    "%2F",
    "%252e%252e",
    "..%5c",
    "\\",
    "experiments",
    "static",
    "api",
    "replay",
    "vendor",
    "ok",
    "secret",
    "secret.jsonl",
    "..%2Fsecret",
    "%00",
    "~",
    "%",
    "%zz",
    "index.html",
    "plotly.min.js",
    "etc",
    "passwd",
    "é",
    "\u202e",
]
segment = st.sampled_from(_SEGMENTS) | st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="?#"), max_size=12
)
path = st.lists(segment, min_size=1, max_size=6).map(lambda s: "/" + "/".join(s))
query_value = st.sampled_from(
    ["-1", "0", "-2", "1e9", "99999999999999999999", "nan", "inf", "", "..%2Fsecret"]
) | st.text(max_size=10)
query = st.lists(
    st.tuples(
        st.sampled_from(["since", "experiment", "token", "speed", "max_gap", "x", ""]), query_value
    ),
    max_size=5,
).map(lambda pairs: "&".join(f"{k}={v}" for k, v in pairs))
target = st.builds(lambda p, q: p + ("?" + q if q else ""), path, query) | st.sampled_from(
    ["*", "http://evil.example/", "//secret", "/" + "a" * 9000, ""]
)
header_value = st.sampled_from(
    [
        "localhost",
        "127.0.0.1",
        "[::1]",
        "evil.example",
        "localhost:99999999",
        "null",
        "http://localhost:3000",
        "http://evil.example",
        "file://",
        "",
        "x" * 5000,
    ]
) | st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=40)


def _request(
    method: str,
    target: str,
    host: str | None,
    origin: str | None,
    upgrade: bool,
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1"]
    if host is not None:
        lines.append(f"Host: {host}")
    if origin is not None:
        lines.append(f"Origin: {origin}")
    if upgrade:
        lines += [
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version: 13",
        ]
    else:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")


@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    method=st.sampled_from(["GET", "GET", "GET", "POST", "HEAD", "PUT", "get", "G\x00T"]),
    target=target,
    host=st.none() | header_value,
    origin=st.none() | header_value,
    upgrade=st.booleans(),
)
def test_no_request_crashes_the_server_or_escapes_the_runs_directory(
    live, method, target, host, origin, upgrade
):
    """Any request line, query, Host and Origin: a sane status, no secret, the server still up."""
    proc, port, _ = live
    answer = raw_request(port, _request(method, target, host, origin, upgrade))
    assert_nothing_leaked(answer)
    if answer:
        status = answer.split(b" ", 2)[1]
        assert (status.isdigit() and int(status) < 500) or status == b"503", answer[:300]
    assert_healthy(proc, port)


def test_the_planted_secret_is_out_of_reach_and_public_runs_are_not(live):
    """The secret beside DIR is unreachable by every spelling; a run inside DIR is reachable."""
    proc, port, _ = live
    for t in [
        "/experiments/..%2Fsecret",
        "/experiments/%2e%2e%2fsecret",
        "/experiments/secret",
        "/?experiment=../secret&since=-1",
        "/?experiment=..%2Fsecret&since=-1",
        "/static/..%2F..%2F..%2Fsecret",
        "/experiments/..%252Fsecret",
        "//..//secret.jsonl",
    ]:
        for upgrade in (False, True):
            answer = raw_request(port, _request("GET", t, "127.0.0.1", None, upgrade))
            assert_nothing_leaked(answer)
            assert not answer.startswith(b"HTTP/1.1 101") or t.startswith("/experiments/secret")
    with sync_connect(f"ws://127.0.0.1:{port}/experiments/ok", open_timeout=10) as ws:
        assert orjson.loads(ws.recv(timeout=10))["type"] == "public"
    assert_healthy(proc, port)


def _pong_expected(frame: str | bytes) -> bool:
    if len(frame) > 256:
        return False
    try:
        decoded = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return False
    return isinstance(decoded, dict) and decoded.get("type") == "ping"


client_frame = (
    st.text(max_size=300)
    | st.binary(max_size=300)
    | st.builds(
        lambda extra: orjson.dumps({"type": "ping", **extra}).decode(),
        st.dictionaries(st.text(max_size=5), st.integers(-(2**63), 2**63 - 1), max_size=3),
    )
    | st.sampled_from(
        ['{"type":"ping"}', '{"type":"ping"', "[]", "null", '{"type":["ping"]}', "{" * 300]
    )
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(frames=st.lists(client_frame, max_size=8))
def test_client_frames_get_pongs_for_pings_and_nothing_else(live, frames):
    """Whatever a client sends under the size limit, it gets exactly one pong per ping and no crash."""
    proc, port, _ = live
    with sync_connect(f"ws://127.0.0.1:{port}/?experiment=none", open_timeout=10) as ws:
        for frame in frames:
            ws.send(frame)
        ws.send('{"type":"ping"}')
        expected = sum(map(_pong_expected, frames)) + 1
        for _ in range(expected):
            assert orjson.loads(ws.recv(timeout=10)) == {"type": "pong", "data": {}}
        with pytest.raises(TimeoutError):
            ws.recv(timeout=0.05)
    assert proc.poll() is None


def test_garbage_after_the_handshake_closes_only_that_connection(live):
    """Invalid frames (bad opcodes, unmasked, 2**63-byte lengths, 10 MB) close that client; others go on."""
    proc, port, base = live
    key = b"dGhlIHNhbXBsZSBub25jZQ=="
    handshake = (
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    garbage = [
        b"\x8f\x80abcd",  # reserved opcode
        b"\x81\x05hello",  # unmasked client frame
        b"\x81\xff" + (2**63 - 1).to_bytes(8, "big") + b"mask",  # absurd length
        b"\x71\x80abcd",  # RSV bits set
        b"\x01\x80abcd\x01\x80abcd",  # continuation misuse
        b"\x88\x82abcd\x00\x00",  # close with a bad code
        b"\x89\xfe\x00\xc8abcd" + b"p" * 200,  # control frame over 125 bytes
        b"\x81\xff" + (10 << 20).to_bytes(8, "big") + b"mask" + b"x" * (10 << 20),
        os.urandom(4096),
    ]
    with sync_connect(f"ws://127.0.0.1:{port}/experiments/ok", open_timeout=10) as honest:
        assert orjson.loads(honest.recv(timeout=10))["type"] == "public"
        for data in garbage:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(handshake)
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = sock.recv(4096)
                    assert chunk, "closed during the handshake"
                    head += chunk
                assert head.startswith(b"HTTP/1.1 101")
                try:
                    sock.sendall(data)
                    while sock.recv(1 << 16):
                        pass  # until the server closes the connection
                except (ConnectionResetError, BrokenPipeError):
                    pass
        honest.send('{"type":"ping"}')
        assert orjson.loads(honest.recv(timeout=10))["type"] == "pong"
        with open(base / "runs" / "ok.jsonl", "ab") as f:
            f.write(b'{"type":"after-garbage"}\n')
        assert orjson.loads(honest.recv(timeout=10))["type"] == "after-garbage"
    assert_healthy(proc, port)
    with (
        pytest.raises(ConnectionClosed) as closed,
        sync_connect(f"ws://127.0.0.1:{port}/", open_timeout=10, max_size=None) as ws,
    ):
        ws.send("x" * (10 << 20))  # a 10 MB text frame: closed with 1009
        ws.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    assert_healthy(proc, port)
