"""Atomic file output: a reader never sees a half-written file, a crash never leaves one behind."""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from pcdms_aug.utils.errors import DataError

# Every temporary this program creates starts with this prefix, and only such files are ever cleaned up: a
# pattern over the user's own names (".*.tmp") would delete their files.
TEMP_PREFIX = ".pcdms-aug-tmp-"
MARK_KEY = "written_by"  # the key (JSON) or text chunk (PNG: "Software") that says which command wrote a file


def mark(command: str) -> str:
    return f"pcdms-aug {command}"


def is_temp_name(name: str) -> bool:
    """Whether a file or folder name is one of our temporaries (left behind by a killed process)."""
    return name.startswith(TEMP_PREFIX)


def temp_dir_beside(path: Path) -> Path:
    """A new, empty, uniquely named temporary folder beside ``path`` (nothing existing is touched)."""
    return Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{path.name}.", dir=path.parent))


@contextmanager
def file_log(logger: logging.Logger, path: Path, fmt: str, datefmt: str | None = None):
    """``logger`` also writes (at INFO and above) into ``path`` while the block runs. The handler is detached
    afterwards: left attached, every later run in the same process would write into this run's log too."""
    try:
        handler = logging.FileHandler(path, encoding="utf-8")
    except OSError as e:
        raise DataError(f"cannot write the log ({e.strerror})", path) from None
    handler.setFormatter(logging.Formatter(fmt, datefmt))
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        handler.close()


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path in the same folder; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes the file private (0600); a finished output gets the usual permissions.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise DataError("no space left on device while writing; free space and run again "
                            "(finished files are kept)", path) from e
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_dir(path: str | Path):
    """Yield a fresh temporary folder beside ``path``; on success it takes the place of ``path`` (an old one is
    moved aside first and deleted after), so a reader sees the old folder or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir_beside(path)
    old = None
    try:
        yield tmp
        if path.exists():
            old = temp_dir_beside(path)
            os.replace(path, old)  # an empty folder is replaced by rename on POSIX
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise DataError("no space left on device while writing; free space and run again", path) from e
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes (hex), read in chunks: weights files are gigabytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_save_image(path: str | Path, image, written_by: str | None = None, **save_kwargs) -> None:
    """Save a PIL image atomically; the format follows ``path``'s suffix. ``written_by`` (a command) marks a
    PNG as that command's (its Software text), so a rerun may replace it and nothing else."""
    path = Path(path)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}.get(path.suffix.lower())
    if written_by is not None and fmt == "PNG":
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        info.add_text("Software", mark(written_by))
        save_kwargs["pnginfo"] = info
    with atomic_path(path) as tmp:
        image.save(tmp, format=fmt, **save_kwargs)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@contextmanager
def folder_lock(folder: str | Path, name: str = ".pcdms-aug.lock"):
    """Hold ``folder`` for one run: a second run on the same folder is refused (it would compute everything
    again, and both would write the same files). The lock file holds the host and pid; a lock whose process
    is gone (killed run) is stale and taken over."""
    import socket

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    me = f"{socket.gethostname()} {os.getpid()}\n"
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                host, pid = path.read_text(encoding="utf-8").split()
                pid = int(pid)
            except (OSError, ValueError):
                host, pid = None, None
            if host == socket.gethostname() and pid is not None and _pid_alive(pid) and pid != os.getpid():
                raise DataError(f"another run (pid {pid}) is writing to this folder; wait for it to finish, or "
                                f"remove {path} if it is not running", folder) from None
            if host not in (None, socket.gethostname()):
                raise DataError(f"a run on host {host} (pid {pid}) holds this folder; remove {path} if it is "
                                "not running", folder) from None
            path.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(me)
        break
    else:
        raise DataError("could not take the folder's lock", path)
    try:
        yield path
    finally:
        try:
            if path.read_text(encoding="utf-8") == me:
                path.unlink()
        except OSError:
            pass
