"""What the ``tailer`` commands accept as paths, and the one line that says what is wrong.

``serve`` and ``ls`` take a directory of runs, ``replay`` one run file; each
check raises :class:`PathError` with a message meant to be printed as is
(``tailer: <message>``), so a file given for a directory (or the other way
round) and a mistyped path are told apart from a missing one.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from recorder.format import is_valid_experiment_id, named_file_id

__all__ = ["PathError", "directory_to_list", "directory_to_serve", "run_to_replay"]


class PathError(ValueError):
    """A path a command cannot use; the message is one line for the user."""


def directory_to_serve(directory: str | os.PathLike[str]) -> str | None:
    """Make sure ``directory`` can be served: create it when only its last component is missing.

    Returns the note to print when it was created. A missing parent is a
    typo more often than a wish: nothing is created then.
    """
    path, shown = Path(directory), os.fspath(directory)  # as typed, in messages
    created = None
    if path.exists() and not path.is_dir():
        raise PathError(f"{shown} is a file; serve its directory or `tailer replay` it")
    if not path.exists():
        parent = Path(os.path.abspath(path)).parent
        if not parent.is_dir():
            raise PathError(
                f"cannot serve {shown}: its parent directory {parent} does not exist "
                "(a typo? only the last component is created)"
            )
        try:
            path.mkdir()
        except FileExistsError:
            pass  # created meanwhile (another tailer): fine
        except OSError as exc:
            raise PathError(f"cannot create {shown}: {exc.strerror or exc}") from None
        else:
            created = (
                f"created {shown} (it did not exist); runs appear as <experiment_id>.jsonl in it"
            )
    if not os.access(path, os.R_OK | os.X_OK):
        raise PathError(f"cannot use {shown}: {os.strerror(errno.EACCES).lower()}")
    return created


def directory_to_list(directory: str | os.PathLike[str]) -> Path:
    """``directory`` for ``tailer ls``: an existing directory."""
    path = Path(directory)
    if path.is_dir():
        return path
    if path.exists():
        parent = Path(os.path.abspath(path)).parent
        raise PathError(
            f"{path} is a file; `tailer ls` lists a directory of runs, such as {parent}"
        )
    raise PathError(f"no such directory: {path}")


def run_to_replay(file: str | os.PathLike[str]) -> Path:
    """``file`` for ``tailer replay``: an existing ``<experiment_id>.jsonl`` file."""
    path = Path(file)
    if path.is_dir():
        raise PathError(
            f"{path} is a directory; `tailer replay` plays one run file "
            f"(such as {path / '<experiment_id>.jsonl'}), `tailer serve` serves a directory"
        )
    if not path.is_file():
        raise PathError(f"no such file: {path}")
    if not is_valid_experiment_id(named_file_id(path.name)):
        raise PathError(f"{path.name!r} is not named <experiment_id>.jsonl")
    return path
