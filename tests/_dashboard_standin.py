"""A throwaway stand-in for `tailer serve`, used only until the real server exists.

Polls files every 50 ms; no origin/host checks. Run: python tests/_dashboard_standin.py DIR PORT [TOKEN]
"""

from __future__ import annotations

import asyncio
import json
import mimetypes
import os
import sys
import urllib.parse
from pathlib import Path

import plotly
from websockets.asyncio.server import serve
from websockets.datastructures import Headers
from websockets.http11 import Response

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from recorder.format import MalformedLine, decode_line, status_of, wire_frame  # noqa: E402

STATIC = Path(__file__).resolve().parents[1] / "tailer" / "static"
VENDOR = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
DIR = Path(sys.argv[1])
PORT = int(sys.argv[2])
TOKEN = sys.argv[3] if len(sys.argv) > 3 else None


def read_lines(eid):
    try:
        raw = (DIR / f"{eid}.jsonl").read_bytes()
    except FileNotFoundError:
        return []
    end = raw.rfind(b"\n")
    return raw[:end].split(b"\n") if end >= 0 else []


def frames(eid, since=-1):
    out = []
    for seq, line in enumerate(read_lines(eid)):
        if seq <= since:
            continue
        try:
            msg = decode_line(line)
        except MalformedLine:
            continue
        out.append((seq, msg, wire_frame(line, eid, seq).decode()))
    return out


def experiments():
    result = []
    for p in sorted(DIR.glob("*.jsonl")):
        eid = p.stem
        fr = frames(eid)
        status = "unknown"
        for _, m, _ in fr:
            s = status_of(m)
            if s:
                status = s
        result.append(
            {
                "experiment_id": eid,
                "messages": len(fr),
                "bytes": p.stat().st_size,
                "first_timestamp": fr[0][1].get("timestamp") if fr else None,
                "last_timestamp": fr[-1][1].get("timestamp") if fr else None,
                "status": status,
            }
        )
    return result


def resp(status, body, ctype):
    return Response(status, "OK" if status == 200 else "Error", Headers({"Content-Type": ctype, "Content-Length": str(len(body))}), body)


def process_request(connection, request):
    url = urllib.parse.urlsplit(request.path)
    q = urllib.parse.parse_qs(url.query)
    if TOKEN and q.get("token", [None])[0] != TOKEN:
        return resp(401, b"unauthorized", "text/plain")
    if request.headers.get("Upgrade", "").lower() == "websocket":
        return None
    path = url.path
    if path == "/healthz":
        return resp(200, b"ok", "text/plain")
    if path == "/":
        return resp(200, (STATIC / "index.html").read_bytes(), "text/html; charset=utf-8")
    if path == "/api/experiments":
        return resp(200, json.dumps(experiments()).encode(), "application/json")
    if path == "/static/vendor/plotly.min.js":
        return resp(200, VENDOR.read_bytes(), "text/javascript")
    if path.startswith("/static/"):
        f = (STATIC / path[len("/static/"):]).resolve()
        if STATIC in f.parents and f.is_file():
            ctype = mimetypes.guess_type(f.name)[0] or "application/octet-stream"
            if f.suffix == ".js":
                ctype = "text/javascript"
            return resp(200, f.read_bytes(), ctype)
    return resp(404, b"not found", "text/plain")


async def handler(ws):
    url = urllib.parse.urlsplit(ws.request.path)
    q = urllib.parse.parse_qs(url.query)
    parts = [p for p in url.path.split("/") if p]
    since = int(q.get("since", ["-1"])[0])
    if parts and parts[0] == "experiments" and len(parts) == 3 and parts[2] == "replay":
        speed = float(q.get("speed", ["1"])[0])
        for _, _, f in frames(parts[1]):
            await ws.send(f)
            if speed:
                await asyncio.sleep(0.01 / speed)
        await ws.send(json.dumps({"type": "replay_end", "experiment_id": parts[1]}))
        await ws.close(1000)
        return
    if parts and parts[0] == "experiments":
        only = {parts[1]}
    else:
        only = {q["experiment"][0]} if "experiment" in q else None
        if only is None or "since" not in q:
            since = None
    last = {}
    for p in DIR.glob("*.jsonl"):
        last[p.stem] = len(read_lines(p.stem)) - 1
    if since is not None:
        for eid in only:
            last[eid] = since
    while True:
        for p in sorted(DIR.glob("*.jsonl")):
            eid = p.stem
            if only and eid not in only:
                continue
            n = len(read_lines(eid))
            if n - 1 < last.get(eid, -1):
                await ws.send(json.dumps({"type": "log_reset", "experiment_id": eid}))
                last[eid] = -1
            for seq, _, f in frames(eid, last.get(eid, -1)):
                await ws.send(f)
                last[eid] = seq
        await asyncio.sleep(0.05)


async def main():
    async with serve(handler, "127.0.0.1", PORT, process_request=process_request) as server:
        print(f"serving http://127.0.0.1:{PORT}/", flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    asyncio.run(main())
