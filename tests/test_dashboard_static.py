"""The dashboard's static files as shipped: index.html preloads the whole module graph."""

from __future__ import annotations

import re
from pathlib import Path

STATIC = Path(__file__).resolve().parents[1] / "tailer" / "static"
_IMPORT = re.compile(r"""^\s*import\s[^;]*?from\s+["']\./([\w.-]+\.js)["']""", re.MULTILINE | re.DOTALL)
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
