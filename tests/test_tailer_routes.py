"""Request checks without sockets: Host, Origin, tokens, WebSocket routes, static paths."""

from __future__ import annotations

import pytest

from tailer.routes import (
    RequestError,
    Route,
    host_allowed,
    is_loopback_host,
    origin_allowed,
    parse_ws_route,
    split_target,
    static_file,
    token_presented,
)


@pytest.mark.parametrize(
    "header",
    [
        "localhost",
        "localhost:8765",
        "127.0.0.1:1",
        "[::1]:8765",
        "[::1]",
        "LOCALHOST",
        "app.localhost:80",
        "127.0.0.2",
    ],
)
def test_loopback_hosts_are_allowed(header):
    """Loopback names and addresses pass the DNS-rebinding check on any port."""
    assert host_allowed(header, "127.0.0.1")


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "evil.example",
        "evil.example:8765",
        "10.0.0.5",
        "[::1",
        "localhost:abc",
        "127.0.0.1:80:90",
    ],
)
def test_other_hosts_are_refused(header):
    """A Host that is not loopback, not served and not allowed is refused."""
    assert not host_allowed(header, "127.0.0.1")


def test_served_address_extra_names_and_wildcard_bind():
    """The served address, --allow-host names, and IP literals on a wildcard bind pass."""
    assert host_allowed("192.168.1.4:8765", "192.168.1.4")
    assert not host_allowed("192.168.1.5:8765", "192.168.1.4")
    assert host_allowed("box.lan:8765", "0.0.0.0", ["box.lan"])
    assert host_allowed("192.168.1.5:8765", "0.0.0.0")
    assert not host_allowed("rebind.attacker.example", "0.0.0.0")
    assert host_allowed("anything.example", "127.0.0.1", ["*"])
    assert (
        is_loopback_host("::1")
        and is_loopback_host("127.0.0.1")
        and not is_loopback_host("0.0.0.0")
    )


@pytest.mark.parametrize(
    "origin",
    [
        None,
        "http://localhost",
        "http://localhost:3000",
        "https://127.0.0.1:8765",
        "http://[::1]:5173",
        "HTTP://LOCALHOST:1",
    ],
)
def test_local_origins_are_allowed(origin):
    """No Origin and http(s) loopback origins on any port are allowed."""
    assert origin_allowed(origin)


@pytest.mark.parametrize(
    "origin",
    [
        "null",
        "https://evil.example",
        "http://localhost.evil.example",
        "file://",
        "ws://localhost",
        "http://localhost:abc",
        "http://127.0.0.1.evil.example",
        "http://user@evil.example",
    ],
)
def test_other_origins_are_refused(origin):
    """Foreign, opaque and malformed origins are refused."""
    assert not origin_allowed(origin)


def test_allow_origin_adds_exact_origins():
    """--allow-origin values match exactly (case and trailing slash aside); '*' allows all."""
    assert origin_allowed("https://dash.example.com", ["https://dash.example.com/"])
    assert not origin_allowed("https://dash.example.com:444", ["https://dash.example.com"])
    assert origin_allowed("https://x.example", ["*"])


def test_token_via_query_bearer_or_cookie():
    """The token may come as ?token=, Authorization: Bearer, or the dashboard's cookie."""
    assert token_presented("s3cret", {"token": ["s3cret"]}, None, None)
    assert token_presented("s3cret", {}, "Bearer s3cret", None)
    assert token_presented("s3cret", {}, "bearer  s3cret ", None)
    assert token_presented("s3cret", {}, None, "a=b; tailer_token=s3cret")
    assert not token_presented("s3cret", {}, None, None)
    assert not token_presented("s3cret", {"token": ["wrong"]}, "Basic s3cret", "tailer_token=nope")
    assert not token_presented("s3cret", {"token": ["s3cre"]}, None, None)
    assert not token_presented("s3cret", {"token": ["\udcff"]}, None, None)


def test_ws_routes():
    """The three WebSocket endpoints and their parameters."""
    assert parse_ws_route("/", {}) == Route("firehose")
    assert parse_ws_route("/", {"experiment": ["a"], "since": ["-1"]}) == Route("firehose", "a", -1)
    assert parse_ws_route("/", {"experiment": ["a"]}) == Route("firehose", "a", None)
    assert parse_ws_route("/experiments/run-1.x", {}) == Route("experiment", "run-1.x", -1)
    assert parse_ws_route("/experiments/r", {"since": ["41"]}) == Route("experiment", "r", 41)
    assert parse_ws_route("/experiments/r/replay", {"speed": ["0"]}) == Route(
        "replay", "r", speed=0.0
    )
    assert parse_ws_route("/experiments/r/replay", {"max_gap": ["2.5"]}).max_gap == 2.5


@pytest.mark.parametrize(
    ("path", "query", "status"),
    [
        ("/experiments/..", {}, 404),
        ("/experiments/%2E%2E%2Fetc%2Fpasswd", {}, 404),
        ("/experiments/..%2f..%2fetc", {}, 404),
        ("/experiments/a/../b", {}, 404),
        ("/experiments/" + "a" * 129, {}, 404),
        ("/experiments/", {}, 404),
        ("/experiments/%00", {}, 404),
        ("/nope", {}, 404),
        ("/", {"experiment": ["../x"]}, 404),
        ("/", {"since": ["3"]}, 400),
        ("/experiments/a", {"since": ["x"]}, 400),
        ("/experiments/a", {"since": ["-2"]}, 400),
        ("/experiments/a/replay", {"speed": ["-1"]}, 400),
        ("/experiments/a/replay", {"speed": ["nan"]}, 400),
        ("/experiments/a/replay", {"speed": ["inf"]}, 400),
        ("/experiments/a/replay", {"max_gap": ["0"]}, 400),
    ],
)
def test_bad_ws_routes(path, query, status):
    """Invalid ids are 404 before any filesystem access; bad parameters are 400."""
    with pytest.raises(RequestError) as info:
        parse_ws_route(path, query)
    assert info.value.status == status


def test_split_target_keeps_the_path_encoded():
    """%2F stays encoded in the path, so it can never become a separator."""
    assert split_target("/experiments/a%2Fb?since=3") == ("/experiments/a%2Fb", {"since": ["3"]})
    with pytest.raises(RequestError):
        split_target("/?" + "&".join(f"k{i}=v" for i in range(100)))


def test_static_file_refuses_traversal(tmp_path):
    """Only regular files inside the static root are served, however the path is spelled."""
    root = tmp_path / "static"
    (root / "css").mkdir(parents=True)
    (root / "css" / "a.css").write_text("x")
    (tmp_path / "secret.txt").write_text("no")
    (root / "link.txt").symlink_to(tmp_path / "secret.txt")
    assert static_file(root, "css/a.css") == (root / "css" / "a.css").resolve()
    assert static_file(root, "css%2Fa.css") == (root / "css" / "a.css").resolve()
    for bad in [
        "../secret.txt",
        "%2E%2E/secret.txt",
        "..%2Fsecret.txt",
        "css/../../secret.txt",
        "/etc/passwd",
        "%2Fetc%2Fpasswd",
        "css",
        "link.txt",
        "css\\a.css",
        "a%00b",
        ".hidden",
        "",
    ]:
        with pytest.raises(RequestError):
            static_file(root, bad)
