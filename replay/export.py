"""``tailer export SRC --out DEST``: runs to Parquet, in bounded memory.

A run file gives one Parquet file; a directory of runs gives a dataset
partitioned by experiment, hive style (``DEST/experiment_id=<id>/part-0.parquet``),
that pyarrow, pandas, DuckDB, Polars and Spark read as is. In a dataset the
experiment id lives only in the directory names (as Spark and
``pyarrow.dataset.write_dataset`` write it), so no reader sees it twice. A
run's per-rank files (``<id>.rank<N>.jsonl``) share its partition, one
``part-rank<N>.parquet`` each, with the ``rank`` column.

The log is read a block of lines at a time; each block becomes one record
batch written at once, so memory does not grow with the log. The output is
written under a temporary name next to ``DEST`` and renamed into place only
when complete: an interrupted export leaves no half-written file behind.

``DEST`` may also be a URL of object storage or any filesystem pyarrow or
fsspec knows (:mod:`replay._dest`), and ``--incremental`` updates a dataset in
place, one run's partition at a time, rewriting only the runs whose files
changed (:mod:`replay._manifest` says what "atomic" means on object storage).

Readers infer the type of a partition column from its values, so ids made only
of digits come back as integers unless the reader is told otherwise (pyarrow:
``partitioning=ds.partitioning(pa.schema([("experiment_id", pa.string())]),
flavor="hive")``; DuckDB: ``hive_types={'experiment_id': VARCHAR}``; Polars:
``hive_schema={"experiment_id": pl.String}``; Spark:
``spark.sql.sources.partitionColumnTypeInference.enabled=false``).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import os
import secrets
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from replay._dest import Destination, open_destination
from replay._manifest import (
    MANIFEST_NAME,
    Manifest,
    commit_partition,
    fingerprint,
    read_manifest,
    write_manifest,
)
from replay._source import Run, SkipCounts, resolve_sources

__all__ = ["ExportError", "ExportResult", "add_arguments", "export", "run"]

PARTITION_KEY = "experiment_id"
PART_NAME = "part-0.parquet"
#: Rows gathered into one Parquet row group (a few MB of Arrow data).
ROW_GROUP_ROWS = 256 * 1024
COMPRESSIONS = ("zstd", "snappy", "gzip", "lz4", "none")
#: Columns written with a Parquet dictionary (few distinct values).
DICTIONARY_COLUMNS = ("experiment_id", "type", "phase", "client_id", "metric")
#: Other columns' encodings, where one beats plain: counters and times as deltas (a third
#: of plain's size), float bytes split by position (zstd then finds what repeats: 4 % smaller,
#: and it takes half the time). Readers that know Parquet 2.x read them all (pyarrow, pandas,
#: DuckDB, Polars, Spark).
COLUMN_ENCODINGS = {
    "seq": "DELTA_BINARY_PACKED",
    "step": "DELTA_BINARY_PACKED",
    "timestamp": "DELTA_BINARY_PACKED",
    "value": "BYTE_STREAM_SPLIT",
}
#: Columns with min/max statistics in each row group. The text columns whose every row
#: group holds all sorts of values (type, phase, client_id, metric; data and extra in the
#: message table) are left out: their min and max would let no reader skip a row group,
#: and computing them cost a sixth of the writing.
STATISTICS_COLUMNS = (
    "experiment_id",
    "rank",
    "seq",
    "attempt",
    "timestamp",
    "epoch",
    "step",
    "round",
    "value",
)


class ExportError(Exception):
    """An export that cannot go ahead; its message is one line for the user."""


class ExportResult:
    """What an export wrote."""

    def __init__(self) -> None:
        self.rows = 0
        self.files = 0
        self.runs = 0
        self.bytes_written = 0
        self.skips = SkipCounts()
        self.ignored: list[str] = []
        self.unchanged = 0  # runs an incremental export left as they were
        self.kept = 0  # runs at the destination no longer in the source, kept


# --------------------------------------------------------------------------- destination


def _looks_like_dataset(path: Path) -> bool:
    """Whether ``path`` is a directory this command could have written (safe to replace)."""
    try:
        entries = list(path.iterdir())
    except OSError:
        return False
    return all(
        (entry.is_dir() and entry.name.startswith(f"{PARTITION_KEY}="))
        or (entry.name == MANIFEST_NAME and entry.is_file())
        for entry in entries
    )


def _check_destination(dest: Path, *, dataset: bool, force: bool) -> None:
    if not (dest.exists() or dest.is_symlink()):
        return
    if not force:
        raise ExportError(f"{dest} already exists; pass --force to replace it")
    if dest.is_dir() and not dest.is_symlink():
        if not dataset:
            raise ExportError(f"{dest} is a directory; refusing to replace it with a file")
        if not _looks_like_dataset(dest):
            raise ExportError(
                f"{dest} is a directory that is not an exported dataset; refusing to replace it"
            )


def _replace(tmp: Path, dest: Path) -> None:
    """Move the finished output ``tmp`` to ``dest``, removing what was there."""
    if dest.is_dir() and not dest.is_symlink():
        if tmp.is_dir():
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
            return
        shutil.rmtree(dest)
    elif tmp.is_dir() and (dest.exists() or dest.is_symlink()):
        dest.unlink()
    os.replace(tmp, dest)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


# --------------------------------------------------------------------------- writing


def _write_run(
    path: Any,
    batches: Iterator[Any],
    schema: Any,
    compression: str,
) -> int:
    """Write one run's batches to the Parquet file ``path`` (or open sink); return the rows written.

    ``schema`` is the table readers get. The batches may hold its text
    columns as dictionary arrays (:func:`replay.tables.metrics_schema`'s
    ``dictionary_text``): Parquet stores them as dictionaries either way, and
    the file still names ``schema`` as its Arrow schema, so every reader sees
    strings.

    Blocks are small (to bound memory), so row groups are gathered from
    several of them. Encoding and compressing a row group runs in a writer
    thread (Arrow releases the GIL there) while this thread parses the next
    lines; at most one row group waits for it, so memory stays bounded.
    """
    import base64
    from concurrent.futures import Future, ThreadPoolExecutor

    import pyarrow as pa
    import pyarrow.parquet as pq

    first = next(batches, None)
    held = schema if first is None else first.schema
    rows = 0
    pending: list[Any] = []
    pending_rows = 0
    writing: Future[None] | None = None
    with (
        pq.ParquetWriter(
            path,
            held,
            compression=None if compression == "none" else compression,
            write_statistics=[name for name in STATISTICS_COLUMNS if name in schema.names],
            # Dictionary pages only where values repeat: hashing every seq, step and value
            # cost a third of the writing, and plain numbers compress smaller.
            use_dictionary=[name for name in DICTIONARY_COLUMNS if name in schema.names],
            column_encoding={
                name: encoding
                for name, encoding in COLUMN_ENCODINGS.items()
                if name in schema.names
            },
        ) as writer,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="runtail-export") as pool,
    ):
        if held != schema:  # the schema Arrow readers restore (pyarrow's own "ARROW:schema" key)
            stored = base64.b64encode(schema.serialize().to_pybytes())
            writer.add_key_value_metadata({b"ARROW:schema": stored})

        def flush() -> None:
            nonlocal writing, pending, pending_rows, rows
            if writing is not None:
                writing.result()  # raises what the writer thread raised
            # One dictionary per column in a row group: the writer then stores it as it is
            # (a block's own dictionaries would make it hash every value again).
            table = pa.Table.from_batches(pending, held).unify_dictionaries()
            writing = pool.submit(writer.write_table, table, row_group_size=pending_rows)
            rows += pending_rows
            pending, pending_rows = [], 0

        try:
            for batch in itertools.chain([] if first is None else [first], batches):
                pending.append(batch)
                pending_rows += batch.num_rows
                if pending_rows >= ROW_GROUP_ROWS:
                    flush()
            if pending:
                flush()
        finally:
            if writing is not None:
                writing.result()
    return rows


def part_name(run: Run) -> str:
    """The Parquet file of ``run`` inside its partition: ``part-0`` or ``part-rank<N>``."""
    return PART_NAME if run.rank is None else f"part-rank{run.rank}.parquet"


def _group(runs: list[Run]) -> dict[str, list[Run]]:
    """Runs by experiment id: a run's per-rank files share one partition."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.experiment_id, []).append(run)
    return groups


def export(
    src: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    table: str = "metrics",
    force: bool = False,
    compression: str = "zstd",
    incremental: bool = False,
    endpoint_url: str | None = None,
    on_bytes: Callable[[int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> ExportResult:
    """Export ``src`` (a run file or a directory of runs) to Parquet at ``dest``.

    Args:
        src: a run file (one Parquet file is written) or a directory of runs
            (a hive-partitioned dataset is written, one partition per run, a
            Parquet file per rank file in it).
        dest: the Parquet file or dataset directory to create: a path, or a
            URL of any filesystem pyarrow or fsspec knows (``s3://bucket/prefix``,
            ``gs://...``, ``file://...``; see :mod:`replay._dest`).
        table: ``"metrics"`` (:func:`replay.read_metrics`'s table) or
            ``"messages"`` (the lossless message table, see
            :func:`replay.tables.message_table_schema`).
        force: replace an existing ``dest`` (a file, or a directory holding
            only ``experiment_id=*`` partitions).
        compression: a Parquet codec, or ``"none"``.
        incremental: update the dataset at ``dest`` in place, rewriting only
            the runs whose files changed since the last incremental export
            (recorded in ``dest/_runtail_manifest.json``). Runs no longer in
            ``src`` are kept.
        endpoint_url: an S3-compatible server for ``s3://`` (else
            ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``).
        on_start: called once with the total bytes to read.
        on_bytes: called with the bytes read after each block.

    Raises:
        ExportError: a missing source, a directory with no runs, an existing
            destination without ``force``, or a destination that cannot be written.
    """
    from replay.tables import message_batches, message_table_schema, metric_batches, metrics_schema

    if table not in ("metrics", "messages"):
        raise ExportError(f"unknown table {table!r}: expected 'metrics' or 'messages'")
    if compression not in COMPRESSIONS:
        raise ExportError(
            f"unknown compression {compression!r}: expected one of {', '.join(COMPRESSIONS)}"
        )
    src_path = Path(src)
    result = ExportResult()
    if not src_path.exists():
        raise ExportError(f"{src_path}: no such file or directory")
    try:
        destination = open_destination(dest, endpoint_url=endpoint_url)
    except ValueError as exc:
        raise ExportError(str(exc)) from None
    dataset = src_path.is_dir()
    if incremental and not dataset:
        raise ExportError("--incremental needs a directory of runs as SRC")
    if dataset:
        runs = resolve_sources(src_path, skipped=result.ignored)
        if not runs:
            raise ExportError(
                f"{src_path} holds no runs (no *.jsonl file named by a valid experiment id)"
            )
    else:
        runs = [Run.of(src_path)]
    if table == "metrics":
        batches_of: Callable[..., Iterator[Any]] = functools.partial(
            metric_batches, dictionary_text=True
        )
        schema = metrics_schema(with_experiment_id=not dataset)
    else:
        batches_of = message_batches
        schema = message_table_schema(with_experiment_id=not dataset)
    writer = _RunWriter(batches_of, schema, compression, result, on_bytes)
    if destination.local is None or incremental:
        if dataset:
            _export_partitions(
                _group(runs),
                destination,
                writer,
                settings={"table": table, "compression": compression},
                incremental=incremental,
                force=force,
                on_start=on_start,
            )
        else:
            _export_remote_file(runs[0], destination, writer, force=force, on_start=on_start)
        return result
    dest_path = destination.local
    if dest_path.exists() and dest_path.resolve() == src_path.resolve():
        raise ExportError(f"{dest_path} is the source; refusing to overwrite it")
    _check_destination(dest_path, dataset=dataset, force=force)
    try:
        dest_path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next(p for p in dest_path.parents if p.exists())
        raise ExportError(f"cannot create {dest_path}: {blocker} is not a directory") from None
    except OSError as exc:
        raise ExportError(f"cannot create {dest_path}: {exc.strerror or exc}") from None
    tmp = dest_path.with_name(f".{dest_path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    if on_start is not None:
        on_start(sum(run.path.stat().st_size for run in runs))
    try:
        try:
            if dataset:
                tmp.mkdir()
        except OSError as exc:
            raise ExportError(f"cannot write {dest_path}: {exc.strerror or exc}") from None
        for experiment_id, group in _group(runs).items():
            if dataset:
                part_dir = tmp / f"{PARTITION_KEY}={experiment_id}"
                part_dir.mkdir()
            for run in group:
                target = part_dir / part_name(run) if dataset else tmp
                with _errors(run, dest_path):
                    writer.write(run, target)
                result.bytes_written += target.stat().st_size
            result.runs += 1
        _replace(tmp, dest_path)
    except BaseException:
        _remove(tmp)
        raise
    return result


@contextlib.contextmanager
def _errors(run: Run | None, dest: object) -> Iterator[None]:
    """``OSError`` as an :class:`ExportError` naming the source or the destination."""
    try:
        yield
    except OSError as exc:
        if run is not None and exc.filename is not None and Path(exc.filename) == run.path:
            raise ExportError(f"cannot read {run.path}: {exc.strerror or exc}") from None
        raise ExportError(f"cannot write {dest}: {exc.strerror or exc}") from None


class _RunWriter:
    """Writes one run file's table to one Parquet file (a path, or an open sink)."""

    def __init__(
        self,
        batches_of: Callable[..., Iterator[Any]],
        schema: Any,
        compression: str,
        result: ExportResult,
        on_bytes: Callable[[int], None] | None,
    ) -> None:
        self.batches_of = batches_of
        self.schema = schema
        self.compression = compression
        self.result = result
        self.on_bytes = on_bytes

    def write(self, run: Run, target: Any) -> None:
        with_id = self.schema.names[0] == PARTITION_KEY
        batches = self.batches_of(
            run, self.result.skips, with_experiment_id=with_id, on_bytes=self.on_bytes
        )
        self.result.rows += _write_run(target, batches, self.schema, self.compression)
        self.result.files += 1


def _export_remote_file(
    run: Run,
    destination: Destination,
    writer: _RunWriter,
    *,
    force: bool,
    on_start: Callable[[int], None] | None,
) -> None:
    """One run file to one Parquet object: written under a hidden name, then moved into place."""
    from pyarrow import fs as pafs

    filesystem = destination.fs
    with _errors(run, destination.url):
        kind = filesystem.get_file_info(destination.path).type
        if kind == pafs.FileType.Directory:
            raise ExportError(
                f"{destination.url} is a directory; refusing to replace it with a file"
            )
        if kind == pafs.FileType.File and not force:
            raise ExportError(f"{destination.url} already exists; pass --force to replace it")
        parent, _, name = destination.path.rpartition("/")
        tmp = f"{parent}/.{name}.tmp-{secrets.token_hex(4)}" if parent else f".{name}.tmp"
        if on_start is not None:
            on_start(run.path.stat().st_size)
        try:
            with filesystem.open_output_stream(tmp) as sink:
                writer.write(run, sink)
            writer.result.bytes_written += filesystem.get_file_info(tmp).size
            filesystem.move(tmp, destination.path)
        except BaseException:
            with contextlib.suppress(OSError):
                filesystem.delete_file(tmp)
            raise
    writer.result.runs += 1


def _export_partitions(
    groups: dict[str, list[Run]],
    destination: Destination,
    writer: _RunWriter,
    *,
    settings: dict[str, str],
    incremental: bool,
    force: bool,
    on_start: Callable[[int], None] | None,
) -> None:
    """Write (or, incrementally, update) a hive dataset one partition at a time.

    Each partition is written under a hidden staging directory in ``dest``
    (readers skip names starting with ``.``), then committed: moved into
    place where the filesystem renames, file by file where it only copies
    (object storage; see :mod:`replay._manifest` for what each reader sees).
    The manifest is written last.
    """
    filesystem = destination.fs
    result = writer.result
    with _errors(None, destination.url):
        existing = _partitions_at(destination)
        if existing and not (incremental or force):
            raise ExportError(
                f"{destination.url} already exists; pass --force to replace it "
                "or --incremental to update it"
            )
        old = read_manifest(destination) if incremental else None
        fingerprints = {
            run_id: {run.path.name: fingerprint(run.path) for run in group}
            for run_id, group in groups.items()
        }
        todo = [
            run_id
            for run_id in groups
            if not (
                old is not None
                and old.matches(settings, run_id, fingerprints[run_id])
                and run_id in existing
            )
        ]
        result.unchanged = len(groups) - len(todo)
        if on_start is not None:
            on_start(sum(run.path.stat().st_size for run_id in todo for run in groups[run_id]))
        manifest = Manifest.start(settings, old)
        staging = destination.join(f".runtail-tmp-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            for run_id in todo:
                names, rows_before = [], result.rows
                part_dir = f"{staging}/{PARTITION_KEY}={run_id}"
                if destination.makes_dirs:
                    filesystem.create_dir(part_dir, recursive=True)
                for run in groups[run_id]:
                    name = part_name(run)
                    target = f"{part_dir}/{name}"
                    with (
                        _errors(run, destination.url),
                        filesystem.open_output_stream(target) as sink,
                    ):
                        writer.write(run, sink)
                    result.bytes_written += filesystem.get_file_info(target).size
                    names.append(name)
                commit_partition(destination, f"{PARTITION_KEY}={run_id}", part_dir, names, staging)
                manifest.add(run_id, fingerprints[run_id], names, result.rows - rows_before)
                result.runs += 1
            if not incremental:
                for stale in sorted(existing - set(groups)):
                    filesystem.delete_dir(destination.join(f"{PARTITION_KEY}={stale}"))
                    manifest.drop(stale)
            result.kept = sum(1 for run_id in manifest.runs if run_id not in groups)
            write_manifest(destination, manifest, staging)
        finally:
            with contextlib.suppress(OSError):
                filesystem.delete_dir(staging)


def _partitions_at(destination: Destination) -> set[str]:
    """The runs with a partition at ``destination``; raises if it holds anything else."""
    from pyarrow import fs as pafs

    filesystem = destination.fs
    kind = filesystem.get_file_info(destination.path).type
    if kind == pafs.FileType.NotFound:
        return set()
    if kind != pafs.FileType.Directory:
        raise ExportError(f"{destination.url} is a file, not a dataset; refusing to replace it")
    runs = set()
    for info in filesystem.get_file_info(pafs.FileSelector(destination.path)):
        name = info.base_name
        if info.type == pafs.FileType.Directory and name.startswith(f"{PARTITION_KEY}="):
            runs.add(name.split("=", 1)[1])
        elif not (name == MANIFEST_NAME or name.startswith(".")):
            raise ExportError(
                f"{destination.url} holds {name!r}, so it is not an exported dataset; "
                "refusing to write into it"
            )
    return runs


# --------------------------------------------------------------------------- command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``tailer export``."""
    parser.add_argument("src", metavar="SRC", help="a run file (.jsonl) or a directory of runs")
    parser.add_argument(
        "--out",
        "-o",
        required=True,
        metavar="DEST",
        help="Parquet file to write (SRC a file) or dataset directory (SRC a directory): a path "
        "or a URL (s3://bucket/prefix, gs://..., file://..., any pyarrow or fsspec filesystem)",
    )
    parser.add_argument(
        "--table",
        choices=("metrics", "messages"),
        default="metrics",
        help="metrics: one row per numeric value (default); messages: one row per message, "
        "data as JSON text, from which every message can be rebuilt",
    )
    parser.add_argument("--force", action="store_true", help="replace DEST if it exists")
    parser.add_argument(
        "--incremental",
        action="store_true",
        help="update the dataset at DEST, rewriting only the runs whose files changed since "
        "the last --incremental export (kept in DEST/_runtail_manifest.json)",
    )
    parser.add_argument(
        "--endpoint-url",
        metavar="URL",
        help="an S3-compatible server for s3:// (default: $AWS_ENDPOINT_URL_S3 or $AWS_ENDPOINT_URL)",
    )
    parser.add_argument(
        "--compression", choices=COMPRESSIONS, default="zstd", help="Parquet codec (default: zstd)"
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar, even on a terminal"
    )


def _progress(
    enabled: bool,
) -> tuple[AbstractContextManager[Any], Callable[[int], None], Callable[[int], None]]:
    """A rich progress bar on stderr, or do-nothing callbacks."""
    if not enabled:
        return nullcontext(), lambda total: None, lambda n: None
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    progress = Progress(
        TextColumn("exporting"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    task = progress.add_task("export", total=None)
    return (
        progress,
        lambda total: progress.update(task, total=total),
        lambda n: progress.advance(task, n),
    )


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return f"{n} B"  # pragma: no cover


def run(args: argparse.Namespace) -> int:
    """Run ``tailer export``; return the exit status (0, or 1 with a one-line error on stderr)."""
    started = time.perf_counter()
    import pyarrow as pa

    # The export allocates and frees one row group after another; the system allocator
    # hands that memory back where Arrow's default pool keeps tens of MB more resident.
    pa.set_memory_pool(pa.system_memory_pool())
    show = not args.no_progress and sys.stderr.isatty()
    bar, on_start, on_bytes = _progress(show)
    try:
        with bar:
            result = export(
                args.src,
                args.out,
                table=args.table,
                force=args.force,
                compression=args.compression,
                incremental=args.incremental,
                endpoint_url=args.endpoint_url,
                on_start=on_start,
                on_bytes=on_bytes,
            )
    except ExportError as exc:
        print(f"tailer export: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        name = f"{exc.filename}: " if exc.filename else ""
        print(f"tailer export: error: {name}{exc.strerror or exc}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - started
    summary = (
        f"exported {result.rows:,} {args.table} rows from {result.runs} run"
        f"{'s' if result.runs != 1 else ''} to {args.out} ({result.files} file"
        f"{'s' if result.files != 1 else ''}, {_size(result.bytes_written)}) in {seconds:.1f} s"
    )
    if result.unchanged:
        summary += f"; {result.unchanged} unchanged run{'s' if result.unchanged != 1 else ''} left as they were"
    if result.kept:
        summary += (
            f"; kept {result.kept} run{'s' if result.kept != 1 else ''} no longer in {args.src}"
        )
    if result.skips:
        summary += f"; skipped {result.skips.describe()}"
    if result.ignored:
        summary += f"; ignored {len(result.ignored)} file(s) not named by an experiment id"
    print(summary)
    return 0
