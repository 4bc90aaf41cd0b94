"""Writing outputs so that nothing is lost, half-written or unreadable: the one helper every writer uses.

* :func:`atomic_write` — a file written to a temporary name beside it, fsync'ed, renamed into place, and the
  folder fsync'ed, so a crash leaves the old file or the new one, never a mix.
* :func:`atomic_directory` — the same for a folder (a checkpoint, ``best_model/``).
* Outputs get the permissions of the user's umask (``0o666`` / ``0o777`` minus the umask), as ``open`` and
  ``mkdir`` would give them: the temporary-file functions of ``tempfile`` (and safetensors) create ``0600`` /
  ``0700``, which a colleague with group read on a shared cluster cannot read (:func:`apply_umask`).
* Every temporary name starts with ``.`` and ends with :data:`TEMPORARY_SUFFIX`, so :func:`remove_leftovers`
  can delete those an interrupted save left behind, and nothing else.
* :func:`exclusive_lock` — one process at a time per output (a run folder, a sidecar being estimated).

Standard library only.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["TEMPORARY_SUFFIX", "apply_umask", "atomic_directory", "atomic_write", "exclusive_lock", "fsync_tree",
           "remove_leftovers", "temporary_name"]

TEMPORARY_SUFFIX = ".merge-tmp"


def _umask() -> int:
    """The process's umask, read without changing it where Linux exposes it (``/proc/self/status``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    current = os.umask(0o022)
    os.umask(current)
    return current


def _fsync(path: str | os.PathLike) -> None:
    """Flush ``path`` (a file or, on POSIX, a folder: its entries) to disk."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if Path(path).is_dir() else 0)
    handle = os.open(path, flags)
    try:
        os.fsync(handle)
    except OSError:  # some file systems refuse fsync on folders; the data files were flushed
        pass
    finally:
        os.close(handle)


def fsync_tree(folder: str | os.PathLike) -> None:
    """fsync every file and folder under ``folder`` (and ``folder`` itself), deepest first."""
    folder = Path(folder)
    for root, directories, files in os.walk(folder, topdown=False):
        for name in files:
            _fsync(Path(root) / name)
        _fsync(root)


def apply_umask(folder: str | os.PathLike) -> None:
    """Give ``folder`` and everything under it the umask's permissions (files ``0o666``, folders ``0o777``, minus
    the umask): some writers (safetensors) create ``0600`` files whatever the umask."""
    mask = _umask()
    for root, directories, files in os.walk(folder):
        os.chmod(root, 0o777 & ~mask)
        for name in files:
            os.chmod(Path(root) / name, 0o666 & ~mask)


def temporary_name(final: str | os.PathLike) -> Path:
    """A fresh hidden name beside ``final`` that :func:`remove_leftovers` recognises: ``.<name>.<random>.merge-tmp``."""
    final = Path(final)
    handle, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=TEMPORARY_SUFFIX, dir=final.parent)
    os.close(handle)
    os.unlink(name)
    return Path(name)


def atomic_write(path: str | os.PathLike, content: str | bytes | Callable[[Path], object],
                 encoding: str = "utf-8") -> Path:
    """Write ``content`` to ``path`` atomically and durably; returns ``path``.

    ``content``: text (written with ``encoding``), bytes, or a function that writes the file at the temporary
    path it is given (``lambda tmp: torch.save(obj, tmp)``). The file gets the umask's permissions."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=path.parent)
    temporary = Path(name)
    try:
        if callable(content):
            os.close(handle)
            content(temporary)
        else:
            with os.fdopen(handle, "wb") as stream:
                stream.write(content.encode(encoding) if isinstance(content, str) else content)
        os.chmod(temporary, 0o666 & ~_umask())
        _fsync(temporary)
        os.replace(temporary, path)
        _fsync(path.parent)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


@contextmanager
def atomic_directory(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``final``; on success its contents are fsync'ed and it replaces ``final``
    (the old one, if any, is removed after the swap), on error it is deleted — a crash mid-write never leaves a
    half-written ``final``. The folder gets the umask's permissions."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=TEMPORARY_SUFFIX, dir=final.parent))
    try:
        yield temporary
        apply_umask(temporary)
        fsync_tree(temporary)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    if final.exists():
        retired = temporary_name(final)
        os.replace(final, retired)
        os.replace(temporary, final)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(temporary, final)
    _fsync(final.parent)


def remove_leftovers(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Delete the temporary files and folders an interrupted :func:`atomic_write` / :func:`atomic_directory` left
    directly in ``folder`` (hidden names ending in :data:`TEMPORARY_SUFFIX`; with ``name``, only those of that
    target and of files named after it, ``.<name>.…``); nothing else is touched. Returns what was removed. Call it
    only where no other process writes those names (e.g. under :func:`exclusive_lock`)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    prefix = f".{name}." if name is not None else "."
    removed = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(prefix) and path.name.endswith(TEMPORARY_SUFFIX):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


@contextmanager
def exclusive_lock(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold the lock file ``path`` (it records this process's pid and host) while this process alone uses
    ``what``. A live holder is an error naming it; one that died without releasing (its record is left, its
    ``flock`` gone with it) is reported and taken over. The file is removed on release. POSIX (``fcntl``)."""
    import fcntl
    import socket

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        handle = open(path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "a process that has not yet written its pid"
            handle.close()
            raise RuntimeError(f"{what} is in use by another run ({owner}; lock file {path}). Wait for that run to "
                               "end, or use another path.") from None
        if path.exists() and path.stat().st_ino == os.fstat(handle.fileno()).st_ino:
            break
        handle.close()  # the previous holder removed the file after we opened it: lock the new one
    try:
        handle.seek(0)
        previous = handle.read().strip()
        if previous:
            print(f"taking over {what} from a run that ended without releasing it ({previous}; lock file {path})",
                  file=sys.stderr)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on host {socket.gethostname()}\n")
        handle.flush()
        yield
    finally:
        path.unlink(missing_ok=True)
        handle.close()
