"""Hostile input against a real tailer: paths, Origins, Hosts, tokens, limits; HTTP endpoints."""

from __future__ import annotations

import asyncio

import orjson

from tailer.server import serve_directory
from tests._tailer_helpers import Writer, aio, http_get, recv_json, ws_connect, ws_status


@aio()
async def test_hostile_paths_get_404_and_touch_nothing(tmp_path):
    """Traversal, encoded traversal, long ids and odd paths are 404, over WS and HTTP."""
    runs = tmp_path / "runs"
    runs.mkdir()
    (tmp_path / "secret.jsonl").write_text('{"type":"secret"}\n')
    async with serve_directory(runs, port=0) as app:
        for target in [
            "/experiments/..%2Fsecret",
            "/experiments/%2E%2E%2Fsecret",
            "/experiments/../secret",
            "/experiments/..",
            "/experiments/" + "a" * 200,
            "/experiments/a%00b",
            "/experiments/.hidden",
            "/experiments/x/replay/more",
            "/?experiment=..%2Fsecret",
            "/?experiment=" + "b" * 129,
            "/experiments/missing/replay",
            "/no/such/endpoint",
        ]:
            status, _, _ = await http_get(app.port, target, upgrade=True)
            assert status == 404, target
        for target in [
            "/static/../tailer/server.py",
            "/static/%2E%2E/server.py",
            "/static/..%2Fserver.py",
            "/static/%2e%2e%2f%2e%2e%2fpyproject.toml",
            "/static/",
            "/static//etc/passwd",
            "/api/experiments/../../etc",
            "/experiments/a",
        ]:
            status, _, _ = await http_get(app.port, target)
            assert status == 404, target
        status, _, _ = await http_get(app.port, "/experiments/a?since=-5", upgrade=True)
        assert status == 400
        assert await ws_status(app.ws_url) == 101  # still serving


@aio()
async def test_origins_are_checked(tmp_path):
    """Foreign browser origins get 403; no Origin, loopback origins and --allow-origin pass."""
    async with serve_directory(tmp_path, port=0, allow_origins=["https://dash.example.org"]) as app:
        for origin in ["https://evil.example", "null", "http://localhost.evil.example"]:
            assert await ws_status(app.ws_url, origin=origin) == 403, origin
            status, _, _ = await http_get(app.port, "/api/experiments", {"Origin": origin})
            assert status == 403
        for origin in [
            None,
            "http://localhost:3000",
            "http://127.0.0.1:8765",
            "http://[::1]:1",
            "https://dash.example.org",
        ]:
            assert await ws_status(app.ws_url, origin=origin) == 101, origin


@aio()
async def test_host_header_is_checked_against_dns_rebinding(tmp_path):
    """A Host that is not loopback, the served address or allowed gets 403."""
    async with serve_directory(tmp_path, port=0, allow_hosts=["tailer.lan"]) as app:
        for host in ["evil.example", "evil.example:80", "10.1.2.3", ""]:
            for upgrade in (False, True):
                status, _, _ = await http_get(app.port, "/", host=host, upgrade=upgrade)
                assert status == 403, (host, upgrade)
        for host in [
            "localhost",
            f"localhost:{app.port}",
            "127.0.0.1",
            "[::1]:9",
            "tailer.lan:8765",
        ]:
            status, _, _ = await http_get(app.port, "/api/experiments", host=host)
            assert status == 200, host


@aio()
async def test_token_is_required_everywhere_but_healthz(tmp_path):
    """With a token, WS and HTTP need ?token= or Bearer (401 otherwise); /healthz does not."""
    Writer(tmp_path, "t").message("m")
    async with serve_directory(tmp_path, port=0, token="s3cret") as app:
        assert await ws_status(app.ws_url) == 401
        assert await ws_status(app.ws_url + "?token=wrong") == 401
        assert await ws_status(app.ws_url + "experiments/t?token=s3cre") == 401
        assert await ws_status(app.ws_url + "?token=s3cret") == 101
        assert (
            await ws_status(app.ws_url, additional_headers={"Authorization": "Bearer s3cret"})
            == 101
        )
        async with ws_connect(app.ws_url + "experiments/t?token=s3cret&since=-1") as ws:
            assert (await recv_json(ws))["type"] == "m"
        for target in ["/", "/api/experiments", "/static/vendor/plotly.min.js"]:
            status, headers, _ = await http_get(app.port, target)
            assert status == 401 and headers["www-authenticate"].startswith("Bearer"), target
        assert (await http_get(app.port, "/api/experiments?token=s3cret"))[0] == 200
        assert (await http_get(app.port, "/api/experiments", {"Authorization": "Bearer s3cret"}))[
            0
        ] == 200
        assert (await http_get(app.port, "/healthz"))[0] == 200
        # The dashboard page sets a cookie so its own static and API requests pass.
        status, headers, _ = await http_get(app.port, "/?token=s3cret")
        assert status == 200
        cookie = headers["set-cookie"].split(";")[0]
        assert "HttpOnly" in headers["set-cookie"] and "SameSite=Strict" in headers["set-cookie"]
        assert (await http_get(app.port, "/api/experiments", {"Cookie": cookie}))[0] == 200


@aio()
async def test_max_clients_refuses_with_503(tmp_path):
    """Beyond --max-clients, handshakes get 503; a freed slot can be reused."""
    async with serve_directory(tmp_path, port=0, max_clients=2) as app:
        async with ws_connect(app.ws_url), ws_connect(app.ws_url):
            assert await ws_status(app.ws_url) == 503
            assert (await http_get(app.port, "/healthz"))[0] == 200
        await asyncio.sleep(0.2)
        assert await ws_status(app.ws_url) == 101


@aio()
async def test_garbage_requests_do_not_crash_the_server(tmp_path):
    """Broken HTTP, bad handshakes and abrupt disconnects leave the server serving."""
    async with serve_directory(tmp_path, port=0) as app:
        for payload in [
            b"\x00\x01\x02\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: localhost\r\n\r\n",
            b"GET / HTTP/1.1\r\n" + b"X: " + b"y" * 10_000 + b"\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            b"GET /",
        ]:
            _reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
            writer.write(payload)
            await writer.drain()
            writer.close()
        ws = await ws_connect(app.ws_url).__aenter__()
        ws.transport.abort()
        await asyncio.sleep(0.2)
        Writer(tmp_path, "ok").message("fine")
        async with ws_connect(app.ws_url + "experiments/ok") as again:
            assert (await recv_json(again))["type"] == "fine"


@aio()
async def test_http_endpoints(tmp_path):
    """/healthz, / (dashboard or placeholder), /static/ with content types, vendored plotly."""
    static = tmp_path / "static"
    (static / "js").mkdir(parents=True)
    (static / "index.html").write_text("<!doctype html><title>dash</title>")
    (static / "js" / "app.js").write_text("console.log(1)")
    (static / "style.css").write_text("body{}")
    runs = tmp_path / "runs"
    async with serve_directory(runs, port=0, static_dir=static) as app:
        status, headers, body = await http_get(app.port, "/healthz")
        assert status == 200 and body == b"ok\n"
        status, headers, body = await http_get(app.port, "/")
        assert status == 200 and b"<title>dash</title>" in body
        assert headers["content-type"].startswith("text/html")
        status, headers, body = await http_get(app.port, "/static/js/app.js")
        assert status == 200 and body == b"console.log(1)"
        assert headers["content-type"].startswith("text/javascript")
        assert (
            headers["cache-control"] == "no-cache"
            and headers["x-content-type-options"] == "nosniff"
        )
        status, headers, _ = await http_get(app.port, "/static/style.css")
        assert headers["content-type"].startswith("text/css")
        status, _, body = await http_get(
            app.port, "/static/style.css", {"If-None-Match": headers["etag"]}
        )
        assert status == 304 and body == b""
        status, headers, body = await http_get(app.port, "/static/vendor/plotly.min.js")
        assert status == 200 and len(body) > 1_000_000 and b"plotly" in body[:2000].lower()
        assert (
            headers["content-type"].startswith("text/javascript")
            and "max-age" in headers["cache-control"]
        )
        status, _, body = await http_get(app.port, "/static/missing.js")
        assert status == 404
    async with serve_directory(runs, port=0, static_dir=tmp_path / "nothing") as app:
        status, _, body = await http_get(app.port, "/")
        assert status == 200 and b"runtail" in body


@aio()
async def test_non_loopback_bind_without_token_warns(tmp_path, caplog):
    """Binding every interface without a token logs a warning."""
    async with serve_directory(tmp_path, host="0.0.0.0", port=0):
        pass
    assert any("without a token" in r.getMessage() for r in caplog.records)
    caplog.clear()
    async with serve_directory(tmp_path, host="0.0.0.0", port=0, token="x"):
        pass
    assert not any("without a token" in r.getMessage() for r in caplog.records)


@aio()
async def test_api_json_is_valid_for_many_experiments(tmp_path):
    """The listing stays valid JSON and sorted with many experiments."""
    for i in range(50):
        Writer(tmp_path, f"exp-{i:02d}").message("m")
    async with serve_directory(tmp_path, port=0) as app:
        _, _, body = await http_get(app.port, "/api/experiments")
    assert [e["experiment_id"] for e in orjson.loads(body)] == [f"exp-{i:02d}" for i in range(50)]
