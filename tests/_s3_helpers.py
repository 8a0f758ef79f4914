"""A real S3 endpoint for tests: moto's server mode as a subprocess on 127.0.0.1, port 0."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_RUNNING = re.compile(r"Running on http://127\.0\.0\.1:(\d+)")

#: What a client needs besides the endpoint: dummy credentials, no instance metadata lookups.
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "runtail-test",
    "AWS_SECRET_ACCESS_KEY": "runtail-test",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@dataclass
class S3Server:
    endpoint: str

    def filesystem(self) -> Any:
        from pyarrow import fs

        return fs.S3FileSystem(
            endpoint_override=self.endpoint,
            scheme="http",
            region="us-east-1",
            access_key=S3_ENV["AWS_ACCESS_KEY_ID"],
            secret_key=S3_ENV["AWS_SECRET_ACCESS_KEY"],
            allow_bucket_creation=True,
        )

    def new_bucket(self) -> str:
        name = f"runtail-{secrets.token_hex(4)}"
        self.filesystem().create_dir(name)
        return name

    def polars_options(self) -> dict[str, str]:
        return {
            "aws_endpoint_url": self.endpoint,
            "aws_access_key_id": S3_ENV["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": S3_ENV["AWS_SECRET_ACCESS_KEY"],
            "aws_region": "us-east-1",
            "aws_allow_http": "true",
        }

    def keys(self, prefix: str) -> dict[str, int]:
        """Every object under ``prefix``: key -> size."""
        from pyarrow import fs

        infos = self.filesystem().get_file_info(fs.FileSelector(prefix, recursive=True))
        return {i.path: i.size for i in infos if i.type == fs.FileType.File}


@contextlib.contextmanager
def moto_server(log: Path) -> Iterator[S3Server]:
    """Start ``moto_server`` (from the dev extra) and yield its endpoint; stop it afterwards."""
    executable = Path(sys.executable).with_name("moto_server")
    command = [str(executable)] if executable.exists() else [sys.executable, "-m", "moto.server"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*command, "-H", "127.0.0.1", "-p", "0"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **S3_ENV},
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            found = _RUNNING.search(log.read_text(errors="replace"))
            if found:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto_server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield S3Server(f"http://127.0.0.1:{found.group(1)}")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
