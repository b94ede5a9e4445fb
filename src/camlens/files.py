"""Writing output files: whole or not at all, never through a symlink, never over an earlier run unasked.

Every file camlens writes (overlays, maps, figures, JSON, CSV, checkpoints, the HTML report) goes to a hidden
temporary name beside it (:func:`temporary_name`), opened with ``O_CREAT | O_EXCL | O_NOFOLLOW`` (a symlink planted
there is never followed), is written and closed (a full disk fails there), and is then renamed onto its name.  A
rename is atomic and replaces a directory entry, never what a symlink points to, so a kill or a full disk leaves the
old file or the new one, never a torn one, and nothing outside the output folder is touched.  Files are not
fsynced: that costs 5 to 9 ms a file here, more than encoding an overlay, and guards against power loss, which is
not promised.  A final name that is a symlink is
refused; with ``replace=False`` an existing file is refused too (published by a hard link, which fails when the
name exists, so there is no window in which it could be overwritten).

CSV cells that a spreadsheet would run as a formula are neutralized by :func:`csv_text`.
"""

from __future__ import annotations

import errno
import itertools
import os
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

from .errors import CamlensError

TEMPORARY_SUFFIX = ".tmp"
# spreadsheet software reads a cell starting with one of these as a formula (OWASP "CSV injection")
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_writes = itertools.count()


class OutputError(CamlensError):
    """A file that could not be written where asked, with the reason and what to do."""


def temporary_name(path: Path) -> Path:
    """Where ``path`` is written before the rename that publishes it: hidden, beside it, one per write (the
    process id and a count, so writer threads and ranks never share one)."""
    return path.with_name(f".{path.name}.{os.getpid()}-{next(_writes)}{TEMPORARY_SUFFIX}")


def check_target(path: Path, replace: bool = True) -> None:
    """Refuse to write ``path`` when it is a symlink, a folder, or (``replace=False``) an existing file.

    Args:
        path: the file about to be written.
        replace: whether an existing regular file may be replaced.

    Raises:
        OutputError: naming the path and what to do.
    """
    if path.is_symlink():
        raise OutputError(
            f"{path} is a symlink; camlens never writes through one: remove it or choose another output folder"
        )
    if path.is_dir():
        raise OutputError(
            f"{path} is a folder, where camlens would write a file: move it or choose another output folder"
        )
    if not replace and path.exists():
        raise OutputError(
            f"{path} already exists (an earlier run's output?): pass --overwrite to replace it, or "
            "choose another output folder"
        )


def output_folder(path: str | Path) -> Path:
    """Create the folder ``path`` (and its parents) if needed and check that it is a real folder.

    Args:
        path: the output folder, or a folder inside it (``.progress``).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        OutputError: when ``path`` is a symlink or a file.
    """
    path = Path(path)
    if path.is_symlink():
        raise OutputError(f"{path} is a symlink; camlens never writes through one: remove it or choose another folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise OutputError(f"{path} is a file, not a folder: choose another output folder") from None
    except OSError as err:
        raise OutputError(f"cannot create the folder {path} ({err.strerror})") from None
    return path


def _open_temporary(tmp: Path) -> int:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    try:
        return os.open(tmp, flags, 0o644)
    except FileExistsError:  # left by a killed process that had our pid; unlink removes a symlink, not its target
        tmp.unlink()
        return os.open(tmp, flags, 0o644)


def _publish(tmp: Path, path: Path, replace: bool) -> None:
    if replace:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # fails if the name exists, whatever it is
    except FileExistsError:
        raise OutputError(
            f"{path} already exists (an earlier run's output?): pass --overwrite to replace it, or "
            "choose another output folder"
        ) from None
    except OSError:  # a filesystem without hard links
        check_target(path, replace=False)
        os.replace(tmp, path)
        return
    tmp.unlink()


@contextmanager
def atomic_open(path: str | Path, *, replace: bool = True) -> Iterator[BinaryIO]:
    """A binary file to write ``path``'s new content into; published by a rename when the block ends without an
    error, discarded otherwise (the old file stays as it was).

    Args:
        path: the final file name.
        replace: whether an existing file may be replaced (else :class:`OutputError`).

    Returns:
        A context manager giving the open temporary file.

    Raises:
        OutputError: when ``path`` is a symlink or a folder, exists with ``replace=False``, or the write fails
            (a full disk, no permission): one line naming the file and the reason.
    """
    with atomic_path(path, replace=replace) as tmp:
        fd = _open_temporary(tmp)
        with os.fdopen(fd, "wb") as f:
            yield f


@contextmanager
def atomic_path(path: str | Path, *, replace: bool = True) -> Iterator[Path]:
    """The temporary name to write ``path`` under, for writers that take a file name (safetensors); renamed onto
    ``path`` when the block ends without an error, removed otherwise.

    Args:
        path: the final file name.
        replace: whether an existing file may be replaced (else :class:`OutputError`).

    Returns:
        A context manager giving the temporary path (which does not exist yet).

    Raises:
        OutputError: as :func:`atomic_open`.
    """
    path = Path(path)
    check_target(path, replace)
    tmp = temporary_name(path)
    try:
        yield tmp
        _publish(tmp, path, replace)
    except OSError as err:
        raise OutputError(_write_failed(path, err)) from err
    finally:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()


def _write_failed(path: Path, err: OSError) -> str:
    reason = err.strerror or str(err)
    hint = "free some space and rerun" if err.errno in (errno.ENOSPC, errno.EDQUOT) else "fix that and rerun"
    return f"cannot write {path} ({reason}); the earlier file, if any, is unchanged: {hint}"


def write_atomic(path: str | Path, data: str | bytes, *, replace: bool = True) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` as :func:`atomic_open` does.

    Args:
        path: the final file name.
        data: the whole content.
        replace: whether an existing file may be replaced.
    """
    with atomic_open(path, replace=replace) as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)


def remove_temporaries(folder: Path) -> None:
    """Delete the temporary files that killed runs left in ``folder`` (hidden ``.NAME.PID-N.tmp`` of a process that
    is gone; never published, so nothing of value)."""
    for stale in folder.glob(f".*{TEMPORARY_SUFFIX}"):
        pid = stale.name[: -len(TEMPORARY_SUFFIX)].rpartition(".")[2].partition("-")[0]
        if pid.isdigit() and not _running(int(pid)) and (stale.is_symlink() or stale.is_file()):
            stale.unlink()


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # someone else's process
        return True
    return True


def csv_text(value: object) -> str:
    """A text cell for a CSV file, with a leading apostrophe when it starts like a formula (``=``, ``+``, ``-``,
    ``@``, tab, carriage return), as spreadsheet software expects; numbers are written as numbers by the caller.

    Args:
        value: the cell's value (converted with ``str``).

    Returns:
        The text to write.
    """
    text = str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text
