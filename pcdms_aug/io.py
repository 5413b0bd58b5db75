"""Atomic file output: a reader never sees a half-written file, a crash never leaves one behind."""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import DataError

# Every temporary this program creates starts with this prefix, and only such files are ever cleaned up: a
# pattern over the user's own names (".*.tmp") would delete their files.
TEMP_PREFIX = ".pcdms-aug-tmp-"


def is_temp_name(name: str) -> bool:
    """Whether a file or folder name is one of our temporaries (left behind by a killed process)."""
    return name.startswith(TEMP_PREFIX)


def temp_dir_beside(path: Path) -> Path:
    """A new, empty, uniquely named temporary folder beside ``path`` (nothing existing is touched)."""
    return Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{path.name}.", dir=path.parent))


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


def atomic_save_image(path: str | Path, image, **save_kwargs) -> None:
    """Save a PIL image atomically; the format follows ``path``'s suffix."""
    path = Path(path)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}.get(path.suffix.lower())
    with atomic_path(path) as tmp:
        image.save(tmp, format=fmt, **save_kwargs)
