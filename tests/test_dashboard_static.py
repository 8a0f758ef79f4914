"""The dashboard's static files as shipped: index.html preloads the whole module graph."""

from __future__ import annotations

import re
from pathlib import Path

from tailer.server import _plotly_js, serve_directory
from tests._tailer_helpers import aio, http_get

STATIC = Path(__file__).resolve().parents[1] / "tailer" / "static"
_IMPORT = re.compile(
    r"""^\s*import\s[^;]*?from\s+["']\./([\w.-]+\.js)["']""", re.MULTILINE | re.DOTALL
)
_PRELOAD = re.compile(r"""<link rel="modulepreload" href="/static/([\w.-]+\.js)">""")


def _module_graph(entry: str) -> set[str]:
    seen: set[str] = set()
    todo = [entry]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(_IMPORT.findall((STATIC / name).read_text()))
    return seen


def test_the_import_graph_is_what_the_parser_sees():
    graph = _module_graph("app.js")
    # app.js imports store.js and views.js; they import the rest: a graph this parser
    # reads wrong (one module) would make the next test pass for nothing.
    assert {"app.js", "store.js", "views.js", "charts.js", "model.js", "reduced.js"} <= graph


def test_index_preloads_every_module_the_app_imports():
    """One round of requests for the whole graph, not one per import level (issue 12)."""
    preloaded = _PRELOAD.findall((STATIC / "index.html").read_text())
    assert len(preloaded) == len(set(preloaded))
    assert set(preloaded) == _module_graph("app.js")


COMPILE_HINT = b"//# allFunctionsCalledOnLoad\n"


def test_what_a_first_visit_runs_is_compiled_off_the_main_thread():
    """V8's explicit compile hint (Chrome 136+) opens plotly's basic bundle and every module
    of the app: each file is compiled whole on a background thread while it loads, not
    function by function on the main thread when first called (issue 12's first visit).
    Only as the very first line does V8 read it."""
    for name in [*sorted(_module_graph("app.js")), "vendor/plotly-basic.min.js"]:
        assert (STATIC / name).read_bytes().startswith(COMPILE_HINT), name


def test_the_head_asks_for_plotly_and_the_history_before_the_stylesheet():
    """An inline script after a stylesheet waits for it: the requests a first visit waits
    for longest (plotly, the run's history) go out from the head, ahead of it."""
    index = (STATIC / "index.html").read_text()
    head = index[: index.index("</head>")]
    stylesheet = head.index('<link rel="stylesheet"')
    assert -1 < head.find('"/static/vendor/plotly-basic.min.js"') < stylesheet
    assert -1 < head.find("__runtailEarly") < stylesheet
    assert head.find("fetch(url.toString()") < stylesheet
    # The app itself needs the body parsed: it is imported after it.
    assert 'import("/static/app.js")' in index[index.index("</main>") :]


def _version(js: bytes) -> str:
    match = re.search(rb"plotly\.js(?: \([\w -]+\))? v(\d+\.\d+\.\d+)", js[:400])
    assert match, js[:200]
    return match.group(1).decode()


def test_the_page_draws_with_plotlys_basic_bundle_of_the_installed_version():
    """The charts use the vendored basic bundle (a quarter of the full one: issue 12's first
    visit); parallel coordinates load the full one from the `plotly` package. Both are one
    plotly.js version, so the two instances on one page agree."""
    index = (STATIC / "index.html").read_text()
    assert '"/static/vendor/plotly-basic.min.js"' in index
    assert "/static/vendor/plotly.min.js" not in index  # the full one only on demand
    basic = (STATIC / "vendor" / "plotly-basic.min.js").read_bytes()
    assert b"plotly.js (basic - minified)" in basic[:200]
    assert (STATIC / "vendor" / "LICENSE-plotly.js.txt").read_text().startswith("MIT License")
    full = _plotly_js()
    assert full is not None and _version(basic) == _version(full.read_bytes())
    assert len(basic) < len(full.read_bytes()) / 3


@aio()
async def test_vendored_bundles_are_served_cacheable():
    """Third-party bundles under /static/vendor/ may be cached for a day (no revalidation)."""
    async with serve_directory(STATIC.parent, port=0) as app:
        for name in ("plotly-basic.min.js", "plotly.min.js"):
            status, headers, body = await http_get(app.port, f"/static/vendor/{name}")
            assert status == 200 and len(body) > 1_000_000, name
            assert "max-age=86400" in headers["cache-control"], name
        _, headers, _ = await http_get(app.port, "/static/app.js")
        assert headers["cache-control"] == "no-cache"
