"""One id, one run: which file a recorder writes for ``(log_dir, experiment_id)``.

A new run never lands in a file that already holds one. A file *holds a
run* when it is not empty, or when a live recorder claimed it and has not
written yet (the claimer holds an exclusive ``flock`` on it until its
recorder closes). An empty file nobody holds (a ``touch``, a run that died
before its first message) is taken over. Otherwise the recorder claims the
first free ``<id>-2``, ``<id>-3``, … and warns once with the id it used.

Claiming a candidate, step by step (two processes starting at once never
share a file):

1. ``open(O_CREAT | O_EXCL)``: a new file belongs to whoever created it …
2. … but another process may open that empty file (step 4) before the
   creator locks it, so ownership is decided by the lock, not the creation:
   ``flock(LOCK_EX | LOCK_NB)``; whoever does not get it moves on.
3. After getting the lock, the file must still be empty (a ``resume=True``
   writer may have appended meanwhile); if not, move on.
4. ``EEXIST``: open the existing file; not empty, or locked → taken, move on;
   otherwise steps 2 and 3 as for a new file.

Where ``flock`` is unsupported (some network file systems), a file we created
is ours and any existing one is taken.

In one process the answer is remembered for the life of the process, keyed
by the resolved directory and the id: every recorder, ``RecorderCallback``
and ``JsonlLogger`` asking for ``(log_dir, "exp")`` gets the file the first
one claimed (the callback and the logger of one Trainer, a ``trainer.test()``
after ``fit``, a forked worker). ``resume=True`` appends to the id as given
(or to what this process already claimed for it).
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import warnings
from pathlib import Path
from typing import NamedTuple

from recorder.format import run_file_name, validate_experiment_id

try:
    import fcntl
except ImportError:  # pragma: no cover (Windows)
    fcntl = None  # type: ignore[assignment]

__all__ = ["Claim", "claim_run", "claimed_id"]

log = logging.getLogger("recorder")

_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)

_claims: dict[tuple[str, str, str], str] = {}
_claims_lock = threading.Lock()


class Claim(NamedTuple):
    """The id a recorder writes under and, for a freshly claimed file, its open descriptor.

    The descriptor (``O_APPEND``) holds the claim's lock; the recorder adopts it.
    """

    experiment_id: str
    fd: int | None


def _key(log_dir: Path, experiment_id: str, suffix: str) -> tuple[str, str, str]:
    return (os.path.realpath(log_dir), experiment_id, suffix)


def claimed_id(log_dir: str | os.PathLike[str], experiment_id: str, suffix: str = "") -> str:
    """What this process records ``experiment_id`` under in ``log_dir`` (itself if not claimed yet)."""
    with _claims_lock:
        return _claims.get(_key(Path(log_dir), experiment_id, suffix), experiment_id)


def claim_run(log_dir: Path, experiment_id: str, *, suffix: str = "", resume: bool) -> Claim:
    """The run this process writes for ``experiment_id`` in ``log_dir`` (which must exist).

    ``suffix`` comes between the id and ``.jsonl`` (``.rank1`` for per-rank
    files). Warns once when the id had to be versioned.

    Raises:
        OSError: the directory cannot be written (the caller warns and goes on).
        ValueError: every free versioned id would be longer than an id may be.
    """
    key = _key(log_dir, experiment_id, suffix)
    with _claims_lock:
        known = _claims.get(key)
        if known is not None:
            return Claim(known, None)
        if resume:
            claim = Claim(experiment_id, None)
        else:
            claim = _claim_free(log_dir, experiment_id, suffix)
        _claims[key] = claim.experiment_id
        _claims[_key(log_dir, claim.experiment_id, suffix)] = claim.experiment_id
    if claim.experiment_id != experiment_id:
        taken = log_dir / run_file_name(experiment_id + suffix)
        text = (
            f"runtail: {taken} already holds a run; this run is recorded as "
            f"{claim.experiment_id!r} ({log_dir / run_file_name(claim.experiment_id + suffix)}). "
            "Pass resume=True to append to the existing run instead."
        )
        log.warning(text)
        warnings.warn(text, UserWarning, stacklevel=4)
    return claim


def _claim_free(log_dir: Path, experiment_id: str, suffix: str) -> Claim:
    version = 1
    while True:
        candidate = experiment_id if version == 1 else f"{experiment_id}-{version}"
        validate_experiment_id(candidate + suffix)
        claim = _try_claim(log_dir / run_file_name(candidate + suffix), candidate)
        if claim is not None:
            return claim
        version += 1


def _try_claim(path: Path, candidate: str) -> Claim | None:
    """The claim on ``path`` (its descriptor holding the lock), or ``None`` if it holds a run.

    A writable name that is no regular file (``/dev/null``, a symlink to
    ``/dev/full``) was put there on purpose: it is used as it is.
    """
    try:
        fd = os.open(path, _OPEN_FLAGS | os.O_EXCL, 0o644)
        created = True
    except FileExistsError:
        try:
            # O_NONBLOCK: a FIFO under the name must not block us (ENXIO: taken).
            fd = os.open(path, (_OPEN_FLAGS & ~os.O_CREAT) | os.O_NONBLOCK)
        except OSError:
            return None  # a directory, a FIFO, an unwritable file: not ours
        created = False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            return Claim(candidate, None)
        if st.st_size > 0:
            os.close(fd)
            return None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None  # a live recorder claimed it a moment ago
            except OSError:  # no flock here: trust only our own O_EXCL
                if not created:
                    os.close(fd)
                    return None
        elif not created:
            os.close(fd)
            return None
        if os.fstat(fd).st_size > 0:
            os.close(fd)
            return None
        if not created:
            os.set_blocking(fd, True)
        return Claim(candidate, fd)
    except OSError:
        os.close(fd)
        raise
