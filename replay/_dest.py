"""Where ``tailer export`` writes: a local path, or a URL on any pyarrow or fsspec filesystem.

:func:`open_destination` turns ``--out`` into a :class:`Destination`: a
pyarrow filesystem, the path in it, and whether it can rename (commit a
partition by moving a directory into place) or, like object storage, only
put whole objects.

URLs:

* a plain path or ``file://...``: the local filesystem (renames);
* ``s3://bucket/prefix``: pyarrow's S3 filesystem with the usual credentials
  (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``,
  ``~/.aws``, instance roles) and region (``AWS_REGION``,
  ``AWS_DEFAULT_REGION``). An S3-compatible server (MinIO, Ceph, moto, R2)
  is named by ``endpoint_url``, else ``AWS_ENDPOINT_URL_S3`` or
  ``AWS_ENDPOINT_URL`` (the variables boto3 and the AWS CLI read; pyarrow
  itself does not);
* anything else pyarrow knows (``gs://``, ``hdfs://``, ``abfs://``), then
  anything fsspec knows (``memory://``, ``sftp://``, ...), through
  :class:`pyarrow.fs.FSSpecHandler`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Destination", "open_destination"]

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


@dataclass(frozen=True)
class Destination:
    """An export destination: ``fs`` and ``path`` as pyarrow names them, ``url`` for messages."""

    fs: Any  # pyarrow.fs.FileSystem
    path: str
    url: str
    renames: bool  # directories move into place atomically (a local filesystem)
    local: Path | None  # the path on this machine, for a local destination

    @property
    def makes_dirs(self) -> bool:
        """Whether directories must be made before files go in (not on object storage)."""
        return self.fs.type_name not in ("s3", "gcs")

    def join(self, *parts: str) -> str:
        return "/".join([self.path.rstrip("/"), *parts])


def _endpoint(endpoint_url: str | None) -> str | None:
    for value in (
        endpoint_url,
        os.environ.get("AWS_ENDPOINT_URL_S3"),
        os.environ.get("AWS_ENDPOINT_URL"),
    ):
        if value:
            return value
    return None


def _s3(url: str, endpoint_url: str | None) -> Destination:
    from pyarrow import fs as pafs

    endpoint = _endpoint(endpoint_url)
    options: dict[str, Any] = {}
    if endpoint is not None:
        options["endpoint_override"] = endpoint
        if endpoint.startswith("http://"):
            options["scheme"] = "http"
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        options["region"] = region
    elif endpoint is not None:
        options["region"] = "us-east-1"  # S3-compatible servers ignore it; AWS's default
    path = url[len("s3://") :].strip("/")
    if not path:
        raise ValueError(f"{url}: no bucket named")
    return Destination(pafs.S3FileSystem(**options), path, url, renames=False, local=None)


def open_destination(
    dest: str | os.PathLike[str], *, endpoint_url: str | None = None
) -> Destination:
    """The filesystem and path ``dest`` names (see the module docstring).

    Raises:
        ValueError: ``dest`` names no filesystem pyarrow or fsspec can open.
    """
    text = os.fspath(dest)
    found = _SCHEME.match(text)
    scheme = found.group(1).lower() if found else ""
    if scheme in ("", "file"):
        local = Path(text[len("file://") :] if scheme else text)
        from pyarrow import fs as pafs

        return Destination(
            pafs.LocalFileSystem(), str(local.absolute()), text, renames=True, local=local
        )
    if scheme in ("s3", "s3a"):
        return _s3("s3://" + text.split("://", 1)[1], endpoint_url)
    from pyarrow import fs as pafs

    try:
        filesystem, path = pafs.FileSystem.from_uri(text)
    except (ValueError, OSError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        try:
            import fsspec
        except ImportError:
            raise ValueError(f"{text}: {exc}") from None
        try:
            spec_fs, path = fsspec.core.url_to_fs(text)
        except (ValueError, ImportError) as spec_exc:
            raise ValueError(f"{text}: {spec_exc}") from None
        filesystem = pafs.PyFileSystem(pafs.FSSpecHandler(spec_fs))
    return Destination(filesystem, path.rstrip("/"), text, renames=False, local=None)
