"""``tailer ls DIR``: a table of the experiments in a directory (or ``--json``)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import orjson

from recorder.format import experiment_id_of
from tailer.paths import PathError, directory_to_list
from tailer.reader import scan_file

__all__ = ["add_arguments", "list_experiments", "run"]

COLUMNS = (
    "experiment_id",
    "status",
    "messages",
    "malformed",
    "first_timestamp",
    "last_timestamp",
    "bytes",
)
HEADERS = ("EXPERIMENT", "STATUS", "MESSAGES", "MALFORMED", "FIRST", "LAST", "SIZE")
SHORT_HEADERS = ("EXPERIMENT", "STATUS", "MSGS", "BAD", "FIRST", "LAST", "SIZE")
RIGHT = {"messages", "malformed", "bytes"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", metavar="DIR", help="directory of <experiment_id>.jsonl files")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")


def list_experiments(directory: str | os.PathLike[str]) -> list[dict[str, object]]:
    """One summary per ``<id>.jsonl`` directly in ``directory``, sorted by id (files read fully)."""
    directory = Path(directory)
    out = []
    for name in sorted(os.listdir(directory)):
        stem = experiment_id_of(name)
        path = directory / name
        if stem is not None and path.is_file():
            try:
                out.append(scan_file(path, stem))
            except OSError as exc:
                print(f"tailer: skipping {path}: {exc.strerror or exc}", file=sys.stderr)
    return out


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def _cells(row: dict[str, object]) -> list[str]:
    cells = []
    for column in COLUMNS:
        value = row[column]
        if column == "bytes":
            cells.append(human_size(int(value)))  # type: ignore[call-overload]
        elif value is None:
            cells.append("-")
        elif column.endswith("_timestamp"):
            # Tables show seconds; --json keeps the recorded precision.
            text = str(value)
            cells.append(text[:19].replace("T", " ") + ("Z" if text.endswith("Z") else ""))
        else:
            cells.append(str(value))
    return cells


def _plain_table(rows: list[dict[str, object]]) -> str:
    table = [list(HEADERS), *(_cells(row) for row in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADERS))]
    lines = []
    for line in table:
        parts = [
            cell.rjust(width) if COLUMNS[i] in RIGHT else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _rich_table(rows: list[dict[str, object]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    colours = {"running": "yellow", "completed": "green", "failed": "red"}
    table = Table(title=title)
    for column, header in zip(COLUMNS, SHORT_HEADERS, strict=True):
        table.add_column(
            header,
            justify="right" if column in RIGHT else "left",
            no_wrap=column in RIGHT or column == "status",
            min_width=10 if column == "experiment_id" else None,
            overflow="fold",
        )
    for row in rows:
        cells = _cells(row)
        status = str(row["status"])
        if status in colours:
            cells[1] = f"[{colours[status]}]{status}[/]"
        table.add_row(*cells)
    Console().print(table)


def run(args: argparse.Namespace) -> int:
    try:
        directory = directory_to_list(args.directory)
    except PathError as exc:
        print(f"tailer: {exc}", file=sys.stderr)
        return 1
    rows = list_experiments(directory)
    if args.json:
        sys.stdout.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode() + "\n")
    elif sys.stdout.isatty():
        _rich_table(rows, str(directory))
    elif rows:
        print(_plain_table(rows))
    else:
        print(f"no experiments in {directory}", file=sys.stderr)
    return 0
