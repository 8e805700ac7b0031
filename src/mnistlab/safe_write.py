"""Every file and directory mnistlab writes goes through these few helpers.

They write atomically (a temporary sibling renamed into place, so a reader sees the old file or
the new one, never half of one) and ``guard`` turns what the disk refuses (full, over quota, no
permission, read-only) into one WriteError line naming the path, what was kept and what to do.

``fault_point`` is called once by each helper just before its step can fail on a real disk; the
fault-injection tests replace it to fail the k-th write of a command.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import WriteError

# errno -> (what the disk said, what the user does about it)
_REFUSALS = {
    errno.ENOSPC: ("no space left on the device", "free some space"),
    errno.EDQUOT: ("disk quota exceeded", "free some space"),
    errno.EACCES: ("permission denied", "make it writable"),
    errno.EPERM: ("operation not permitted", "make it writable"),
    errno.EROFS: ("read-only file system", "remount it read-write"),
}


def fault_point(step: str, path: Path) -> None:
    """A place where a real disk can refuse a write (``step`` names it); does nothing here."""


def reason(exc: OSError) -> tuple[str, str]:
    """(what went wrong, what to do) for an OSError from a write."""
    said, fix = _REFUSALS.get(exc.errno or -1, (None, "check the path"))
    return said or (exc.strerror or str(exc)).lower(), fix


@contextlib.contextmanager
def guard(
    path: Path | str, what: str, kept: str | Callable[[], tuple[str, str | None]], elsewhere: str
) -> Iterator[None]:
    """Turn an OSError inside the block into one WriteError line.

    ``kept`` says what is intact (or a callable giving (kept, next step) once the write failed, so
    it can look at what is on disk); ``elsewhere`` is the alternative when there is no next step
    ("another --out")."""
    try:
        yield
    except WriteError:
        raise
    except OSError as exc:
        if exc.errno is None:
            raise
        said, fix = reason(exc)
        kept_text, then = kept() if callable(kept) else (kept, None)
        action = f"{fix}, then {then}" if then else f"{fix} or use {elsewhere}"
        raise WriteError(f"{path}: {said} while writing {what}; {kept_text}; {action}") from None


def make_dirs(path: Path) -> None:
    """mkdir -p."""
    if not Path(path).is_dir():
        fault_point("mkdir", path)
        Path(path).mkdir(parents=True, exist_ok=True)


def _umask() -> int:
    """The process umask (reading it means setting it, so it is set straight back)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file so that readers see either the old content or the new, never a partial file."""
    path = Path(path)
    make_dirs(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600; give what a plain open() would
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            fault_point("write", path)  # where a full disk shows: the data is half on disk
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def temp_dir(parent: Path, prefix: str) -> Path:
    """A new empty directory in ``parent`` with the usual permissions (mkdtemp makes 0700)."""
    make_dirs(parent)
    fault_point("mkdir", parent)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


def replace(src: Path, dst: Path) -> None:
    """Rename ``src`` over ``dst`` (atomic within one filesystem)."""
    fault_point("rename", dst)
    os.replace(src, dst)


def link_or_copy(src: Path, dst: Path) -> None:
    """A hard link, or a copy where the filesystem has none."""
    make_dirs(dst.parent)
    fault_point("link", dst)
    try:
        os.link(src, dst)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno in _REFUSALS and exc.errno not in (errno.EPERM,):
            raise  # a full or read-only disk refuses the copy too
        shutil.copyfile(src, dst)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id still runs (a writer whose leftovers must not be touched)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass  # exists, owned by someone else
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """A killed writer that its parent has not reaped yet still has an id, but writes nothing more."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False  # no /proc (not Linux): trust the id
