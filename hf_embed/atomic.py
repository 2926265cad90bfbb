"""Atomic file writes: a reader sees the previous file or the complete new one, never a partial file.

Used for the text files of a run (the model card); the `.npy` / `.npz` exports go through the model's own atomic
writers in `numpy_io.py`.

The content goes to a temporary file in the destination folder (same file system), is flushed to disk, then
`os.replace` swaps it in, which is atomic on POSIX and Windows. A writer that fails or is killed leaves the
previous file untouched; an exception also removes the temporary file. A process killed by SIGKILL may leave a
hidden `.NAME.tmp-*` file behind, never a truncated `NAME`.
"""

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_write", "atomic_write_text"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block ends without error, it replaces `path` atomically.

    `suffix` is the temporary file's ending (default: that of `path`). Writers such as `np.save` append `.npy`
    to a name without it, so the temporary name keeps the ending they expect.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix if suffix is None else suffix
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object], suffix: str | None = None) -> Path:
    """Call `write(tmp_path)` and move the result to `path` atomically; return `path`."""
    with atomic_path(path, suffix=suffix) as tmp:
        write(tmp)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(folder: Path) -> None:
    if os.name != "posix":  # directories cannot be opened for fsync on Windows
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
