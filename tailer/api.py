"""The dashboard's data endpoints beyond the WebSockets: ``/api/metrics``, ``/api/hparams``, ``/api/schema``.

``GET /api/metrics?runs=ID,…[&metric=NAME][&format=csv|json|parquet]`` returns
exactly the rows :func:`replay.read_metrics` gives for those runs (every run
in the directory when ``runs`` is absent), filtered by ``metric``. A run id
stands for its file ``<id>.jsonl`` and its per-rank files ``<id>.rank<N>.jsonl``.

``GET /api/hparams`` returns, per experiment, the ``hparams`` and
``training_start`` messages near the start of its file (where recorders write
them), so the runs list can filter on ``key=value`` without reading whole runs.
The page turns them into hyperparameters with the same code as a live run's.

Both read files, so the server runs them in a thread (:func:`asyncio.to_thread`).

``GET /api/schema`` tells the page what it must know of the log format, from
its one owner :mod:`recorder.format`: ``{"index_keys": [...]}``, the keys that
index a value rather than being one. ``model.js`` imports it as a JSON module,
so the page charts exactly the values replay's tables make rows of.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import orjson

from recorder.format import (
    INDEX_KEYS,
    MalformedLine,
    decode_line,
    is_valid_experiment_id,
    named_file_id,
)
from tailer.routes import RequestError

__all__ = [
    "MetricsQuery",
    "hparams_body",
    "metrics_body",
    "parse_metrics_query",
    "schema_body",
]

FORMATS = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
    "parquet": "application/vnd.apache.parquet",
}
HPARAMS_TYPES = frozenset({"hparams", "training_start"})
HPARAMS_BYTES = 1 << 20  # hyperparameters are written first: read at most this much per file


def schema_body() -> bytes:
    """The ``/api/schema`` body: ``{"index_keys": [...]}`` (:data:`recorder.format.INDEX_KEYS`)."""
    return orjson.dumps({"index_keys": sorted(INDEX_KEYS)})


@dataclass(frozen=True)
class MetricsQuery:
    """A parsed ``/api/metrics`` request: the files to read, the metric, the format."""

    files: tuple[Path, ...]
    metric: str | None
    format: str


def _one(query: Mapping[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None


def parse_metrics_query(query: Mapping[str, list[str]], served: list[Path]) -> MetricsQuery:
    """Check an ``/api/metrics`` query; 400 for a bad format, 404 for an unknown or invalid id.

    ``served``: the run files that may be read (those ``/api/experiments`` lists);
    nothing on disk is touched here.
    """
    fmt = (_one(query, "format") or "json").lower()
    if fmt not in FORMATS:
        raise RequestError(400, f"format must be csv, json or parquet, not {fmt[:20]!r}")
    metric = _one(query, "metric") or None
    runs_param = _one(query, "runs")
    if not runs_param:
        return MetricsQuery(tuple(sorted(served)), metric, fmt)
    files: list[Path] = []
    for run in dict.fromkeys(r.strip() for r in runs_param.split(",") if r.strip()):
        if not is_valid_experiment_id(run):
            raise RequestError(404, "no such experiment")
        rank_file = re.compile(rf"{re.escape(run)}\.rank\d+")
        found = [
            p
            for p in sorted(served)
            if named_file_id(p.name) == run or rank_file.fullmatch(named_file_id(p.name))
        ]
        if not found:
            raise RequestError(404, f"no such experiment: {run}")
        files.extend(found)
    return MetricsQuery(tuple(files), metric, fmt)


def metrics_body(request: MetricsQuery) -> tuple[bytes, str]:
    """The response body and content type (blocking: reads the files)."""
    import warnings

    import replay

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", replay.SkippedLinesWarning)
        table = replay.read_metrics(list(request.files)) if request.files else None
    if table is None:
        import pandas as pd

        table = pd.DataFrame({c: pd.Series(dtype="object") for c in replay.METRIC_COLUMNS})
    if request.metric is not None:
        table = table[table["metric"] == request.metric].reset_index(drop=True)
    if request.format == "parquet":
        buffer = io.BytesIO()
        table.to_parquet(buffer, index=False)
        return buffer.getvalue(), FORMATS["parquet"]
    if request.format == "csv":
        return table.to_csv(index=False).encode("utf-8"), FORMATS["csv"]
    return _json_rows(table), FORMATS["json"]


def _json_value(value: object) -> object:
    """A cell as JSON: NaN and ±inf as the recorder writes them, missing as null."""
    if value is None:
        return None
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if hasattr(value, "isoformat"):
        try:
            import pandas as pd

            if pd.isna(value):
                return None
        except (TypeError, ValueError):
            pass
        return value.isoformat().replace("+00:00", "Z")
    try:
        import pandas as pd

        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    if hasattr(value, "item"):
        return value.item()
    return value


def _json_rows(table) -> bytes:
    columns = list(table.columns)
    rows = []
    for record in table.itertuples(index=False, name=None):
        row: dict[str, object] = {}
        for name, cell in zip(columns, record, strict=True):
            # A missing float index (epoch, step) is null; the value column keeps NaN as "NaN".
            if name != "value" and isinstance(cell, float) and math.isnan(cell):
                row[name] = None
            else:
                row[name] = _json_value(cell)
        rows.append(row)
    return orjson.dumps(rows)


def hparams_body(files: list[Path]) -> bytes:
    """``{experiment_id: [message, …]}``: the hparams and training_start messages near each file's start."""
    out: dict[str, list[dict[str, object]]] = {}
    for path in files:
        try:
            with open(path, "rb") as f:
                head = f.read(HPARAMS_BYTES)
        except OSError:
            continue
        messages = []
        for line in head.split(b"\n")[:-1]:
            if b'"hparams"' not in line and b'"training_start"' not in line:
                continue
            try:
                message = decode_line(line)
            except MalformedLine:
                continue
            if isinstance(message, dict) and message.get("type") in HPARAMS_TYPES:
                messages.append({"type": message["type"], "data": message.get("data")})
        if messages:
            out[named_file_id(path.name)] = messages
    return orjson.dumps(out)
