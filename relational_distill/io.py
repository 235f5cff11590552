"""Atomic file writes: write to a temporary file in the same folder, fsync, then rename over the target.
The file gets the permissions the user's umask gives a new file (``mkstemp`` alone would leave it 0600)."""
from __future__ import annotations

import fcntl
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator


def _npy_errors() -> tuple[type[BaseException], ...]:
    import tokenize
    import zipfile
    import zlib

    # numpy parses a .npy header with Python's tokenizer: a damaged header raises SyntaxError or TokenError
    return (OSError, ValueError, EOFError, KeyError, SyntaxError, tokenize.TokenError, zipfile.BadZipFile, zlib.error)


NPY_ERRORS = _npy_errors()  # what np.load raises on a damaged .npy or .npz file


def read_text(path: Path, what: str) -> str:
    """The UTF-8 text of ``path`` (a leading byte-order mark dropped); a file that is not UTF-8 text, or holds a NUL
    byte, is a one-line :class:`UserError` naming it as ``what``."""
    from .errors import UserError

    path = Path(path)
    raw = path.read_bytes()
    nul = raw.find(b"\0")
    if nul >= 0:
        raise UserError(f"{path}: a NUL byte at {nul}; the {what} is not text (corrupt?)")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text (byte {err.start}); the {what} is corrupt") from None


def atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Call ``write(file)`` on a temporary file and move it to ``path`` only once it is complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.filename is None:  # e.g. ENOSPC from write or fsync: name the file
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise


def _umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text), mode="w")


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=_jsonable) + "\n")


def atomic_torch_save(path: Path, obj: Any) -> None:
    import torch

    atomic_write(path, lambda f: torch.save(obj, f))


def _jsonable(x: Any) -> Any:
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


LOCK_FILE = ".rdistill.lock"


def staging_folder(path: Path) -> Path:
    """``.<name>.<pid>.tmp`` beside ``path``: where a folder is written before it is renamed to ``path``, named as
    :func:`atomic_write` names its temporary files (``.<name>.<random>.tmp``), so that one rule
    (:func:`is_scratch_file`) tells every unfinished write from content."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def is_scratch_file(path: Path) -> bool:
    """A lock file of :func:`folder_lock` (``.rdistill.lock``, ``.rdistill-<part>.lock``), or the temporary file of
    an :func:`atomic_write` or :func:`staging_folder` (``.<name>.<random or pid>.tmp``, left behind by a killed
    writer): not content of a folder."""
    name = Path(path).name
    return name.startswith(".") and (name.endswith(".tmp") or (name.startswith(".rdistill") and name.endswith(".lock")))


@contextmanager
def folder_lock(folder: Path, what: str, part: str | None = None, wait: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (``what`` names it in the error) for as long as the block runs; a second
    process that asks for it is refused in one line, or with ``wait`` waits for it. ``part`` locks only that part
    of the folder (``FOLDER/.rdistill-<part>.lock``; e.g. one shard of a feature store), so processes writing
    different parts run side by side. The lock is the operating system's (``flock`` on the lock file, which records
    the holder's pid): it goes with the process that holds it, so one left by a killed process is free again, with
    no stale-lock rule. A missing folder is made; on release the lock file is removed, and the folder too when the
    lock made it and nothing else was written there."""
    from .errors import UserError

    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (LOCK_FILE if part is None else f".rdistill-{part}.lock")
    try:
        while True:
            handle = open(path, "a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                handle.seek(0)
                owner = handle.read().strip()[:20] or "?"
                handle.close()
                raise UserError(f"{folder}: another rdistill process (pid {owner}) is writing this {what}; wait for "
                                f"it to finish, or choose another --out folder") from None
            try:
                if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                    break  # the file still at the path is the one locked (not one a releasing holder just removed)
            except FileNotFoundError:
                pass
            handle.close()
        try:
            handle.truncate(0)
            handle.write(str(os.getpid()))
            handle.flush()
            yield
        finally:
            path.unlink(missing_ok=True)
            handle.close()
    finally:
        if created:
            try:
                folder.rmdir()  # only when empty: refused, or failed before writing anything
            except OSError:
                pass
