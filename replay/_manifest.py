"""What ``tailer export --incremental`` keeps at its destination, and how a partition is committed.

The manifest, ``DEST/_runtail_manifest.json`` (readers of the dataset skip
names starting with ``_``), records per run the fingerprint of each of its
files when it was last exported: size, modification time in ns, and a
BLAKE2b digest of the file's first and last 64 KiB. A run whose files all
match is not read again. Runs are append-only files, so a growing run changes
its size; a file replaced by one of the same size and time (``rsync -t`` of
an edited copy) almost always changes one end.

What "atomic per partition" means:

* where the filesystem renames (a local path, ``file://``), a run's partition
  is written whole under a hidden staging directory and moved into place: a
  reader sees the old partition or the new one, never a mix, never a partly
  written file (for the instant between moving the old one aside and the new
  one in, it sees none);
* on object storage (S3, GCS: no rename), every Parquet file is written under
  a hidden staging key and then copied to its final key server-side, which
  replaces the object in one step (S3 has strong read-after-write
  consistency), and the staging object is deleted. A reader never sees a
  partly written file, nor a run twice (file names are fixed per rank file,
  ``part-0.parquet`` or ``part-rank<N>.parquet``); a run with several rank
  files may, for a moment, show some ranks from this export and others from
  the previous one. The manifest is written last, so an interrupted export
  only makes the next ``--incremental`` export redo the runs it did not record.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from replay._dest import Destination

__all__ = [
    "MANIFEST_NAME",
    "Manifest",
    "commit_partition",
    "fingerprint",
    "read_manifest",
    "write_manifest",
]

MANIFEST_NAME = "_runtail_manifest.json"
_FORMAT = "runtail-export-manifest"
_VERSION = 1
#: Bytes read from each end of a file for its digest.
ENDS_BYTES = 64 * 1024


def fingerprint(path: Path) -> dict[str, Any]:
    """``{size, mtime_ns, ends}`` of a run file (``ends``: digest of its first and last 64 KiB)."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as file:
        stat = os.fstat(file.fileno())
        digest.update(file.read(ENDS_BYTES))
        if stat.st_size > 2 * ENDS_BYTES:
            file.seek(stat.st_size - ENDS_BYTES)
        digest.update(file.read(ENDS_BYTES))
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "ends": digest.hexdigest()}


@dataclass
class Manifest:
    """The export settings and, per run, its files' fingerprints, Parquet files and rows."""

    settings: dict[str, str]
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def start(cls, settings: dict[str, str], old: Manifest | None) -> Manifest:
        """A manifest for a new export, keeping ``old``'s runs when written with the same settings."""
        runs = dict(old.runs) if old is not None and old.settings == settings else {}
        return cls(dict(settings), runs)

    def matches(self, settings: dict[str, str], run_id: str, files: dict[str, Any]) -> bool:
        """Whether run ``run_id`` was exported, with these settings, from exactly these files."""
        entry = self.runs.get(run_id)
        return self.settings == settings and entry is not None and entry.get("files") == files

    def add(self, run_id: str, files: dict[str, Any], parts: list[str], rows: int) -> None:
        self.runs[run_id] = {"files": files, "parts": parts, "rows": rows}

    def drop(self, run_id: str) -> None:
        self.runs.pop(run_id, None)

    def to_json(self) -> bytes:
        document = {"format": _FORMAT, "version": _VERSION, **self.settings, "runs": self.runs}
        return json.dumps(document, indent=1, sort_keys=True).encode()


def read_manifest(destination: Destination) -> Manifest | None:
    """The manifest at ``destination``, or None if there is none (or none this version reads)."""
    try:
        with destination.fs.open_input_stream(destination.join(MANIFEST_NAME)) as stream:
            document = json.loads(stream.read())
    except (FileNotFoundError, ValueError):
        return None
    except OSError as exc:  # some filesystems report a missing object as a plain OSError
        if "not found" in str(exc).lower() or "does not exist" in str(exc).lower():
            return None
        raise
    if (
        not isinstance(document, dict)
        or document.get("format") != _FORMAT
        or document.get("version") != _VERSION
        or not isinstance(document.get("runs"), dict)
    ):
        return None
    settings = {key: str(document.get(key)) for key in ("table", "compression")}
    return Manifest(settings, document["runs"])


def write_manifest(destination: Destination, manifest: Manifest, staging: str) -> None:
    """Write the manifest in one step: a rename where there is one, one PUT on object storage."""
    filesystem = destination.fs
    target = destination.join(MANIFEST_NAME)
    if not destination.renames:
        with filesystem.open_output_stream(target) as stream:
            stream.write(manifest.to_json())
        return
    filesystem.create_dir(staging, recursive=True)
    tmp = f"{staging}/{MANIFEST_NAME}"
    with filesystem.open_output_stream(tmp) as stream:
        stream.write(manifest.to_json())
    filesystem.move(tmp, target)


def commit_partition(
    destination: Destination, partition: str, written: str, names: list[str], staging: str
) -> None:
    """Put the partition written at ``written`` (files ``names``) in place of ``partition``."""
    from pyarrow import fs as pafs

    filesystem = destination.fs
    final = destination.join(partition)
    exists = filesystem.get_file_info(final).type != pafs.FileType.NotFound
    if destination.renames:
        if not exists:
            filesystem.move(written, final)
            return
        old = f"{staging}/old-{secrets.token_hex(4)}"
        filesystem.move(final, old)
        filesystem.move(written, final)
        filesystem.delete_dir(old)
        return
    for name in names:
        filesystem.move(f"{written}/{name}", f"{final}/{name}")
    if exists:
        for info in filesystem.get_file_info(pafs.FileSelector(final)):
            if info.base_name not in names and info.type == pafs.FileType.File:
                filesystem.delete_file(info.path)
