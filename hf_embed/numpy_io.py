"""Checked reading and atomic writing of the `.npy` / `.npz` files the embedding arguments name.

Reading never unpickles (`allow_pickle=False`) and every problem is a `ValueError` naming the argument, the path,
what was expected and what was found. Integer and float arrays are accepted and cast to float32; anything else
(bool, complex, strings, objects) is refused.

Writing goes to a temporary file in the destination folder, which is flushed to disk and then swapped in with
`os.replace`: a reader sees the previous file or the complete new one, and a killed writer never leaves a
truncated file behind.
"""

import os
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np

__all__ = ["atomic_write", "check_array", "load_npy", "load_npz", "save_npy", "save_npz"]

_FLOAT32_MAX = float(np.finfo(np.float32).max)
_NPY_MAGIC, _ZIP_MAGIC = b"\x93NUMPY", b"PK\x03\x04"


def describe_path(path: str | os.PathLike) -> str:
    """The path as given, and the absolute path it resolves to when that differs."""
    given, resolved = os.fspath(path), os.path.abspath(path)
    return repr(given) if given == resolved else f"{given!r} (resolved: {resolved!r})"


def _open_array_file(path: str | os.PathLike, argument: str, expected: str):
    """`np.load(path, allow_pickle=False)` after checking the file exists and starts like a .npy or .npz file."""
    cannot_read = f"{argument}: cannot read {describe_path(path)}: expected {expected}, found"
    if not os.path.isfile(path):
        raise ValueError(f"{cannot_read} {'a directory' if os.path.isdir(path) else 'no such file'}")
    try:
        with open(path, "rb") as handle:
            magic = handle.read(len(_NPY_MAGIC))
    except OSError as err:
        raise ValueError(f"{cannot_read} an unreadable file ({err})") from err
    if not magic.startswith((_NPY_MAGIC, _ZIP_MAGIC)):  # np.load would treat anything else as a pickle
        raise ValueError(
            f"{cannot_read} neither a .npy nor an .npz file (the first bytes are {magic!r}; numpy would unpickle it, "
            "which is refused: allow_pickle=False)"
        )
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise _load_error(err, argument, path, expected) from err


def _load_error(err: Exception, argument: str, path: str | os.PathLike, expected: str) -> ValueError:
    """The ValueError for a file numpy could not load: an object array (refused), or a corrupt/truncated file."""
    if "allow_pickle" in str(err):  # numpy's refusal of object arrays
        return ValueError(
            f"{argument}: {describe_path(path)} holds pickled or object data, which is refused "
            f"(allow_pickle=False); expected {expected} ({err})"
        )
    return ValueError(
        f"{argument}: cannot read {describe_path(path)}: expected {expected}, found a corrupt file ({err})"
    )


def check_array(array: np.ndarray, expected_shape: tuple[int, ...], argument: str, where: str) -> np.ndarray:
    """Return `array` as float32 after checking dtype (integer or float), exact shape and finiteness.

    Values that are finite in the file but overflow float32 are refused like NaN and infinity.
    """
    expected_shape = tuple(expected_shape)
    if array.dtype.kind not in "iuf":
        raise ValueError(
            f"{argument}: {where} has dtype {array.dtype}; expected a numeric (integer or float) array "
            f"of shape {expected_shape}"
        )
    if tuple(array.shape) != expected_shape:
        raise ValueError(f"{argument}: {where} has shape {tuple(array.shape)}; expected shape {expected_shape}")
    if array.dtype.kind == "f":
        bad = ~np.isfinite(array)
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"{argument}: {where} holds {int(bad.sum())} NaN or infinite values (first at index {first}); "
                "expected finite values"
            )
    if array.size and float(np.abs(array).max()) > _FLOAT32_MAX:
        raise ValueError(
            f"{argument}: {where} holds values up to {float(np.abs(array).max()):.4g}; expected values within the "
            f"float32 range (|x| <= {_FLOAT32_MAX:.4g})"
        )
    return array.astype(np.float32)


def load_npy(path: str | os.PathLike, expected_shape: tuple[int, ...], argument: str) -> np.ndarray:
    """Read a `.npy` array of exactly `expected_shape` as float32."""
    expected = f"a .npy file holding a numeric array of shape {tuple(expected_shape)}"
    loaded = _open_array_file(path, argument, expected)
    if not isinstance(loaded, np.ndarray):
        loaded.close()
        raise ValueError(f"{argument}: {describe_path(path)} is an .npz archive; expected {expected}")
    return check_array(loaded, expected_shape, argument, describe_path(path))


def load_npz(path: str | os.PathLike, argument: str) -> dict[str, np.ndarray]:
    """Read every array of an `.npz` archive (unchecked shapes; the caller checks them with `check_array`)."""
    expected = "an .npz archive of numeric arrays"
    loaded = _open_array_file(path, argument, expected)
    if isinstance(loaded, np.ndarray):
        raise ValueError(f"{argument}: {describe_path(path)} is a single .npy array; expected {expected}")
    try:
        with loaded:
            return {key: loaded[key] for key in loaded.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise _load_error(err, argument, path, expected) from err


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Call `write(binary_file)` on a temporary file beside `path`, then atomically rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    """`np.save` to exactly `path` (no `.npy` appended), atomically."""
    return atomic_write(path, lambda handle: np.save(handle, array, allow_pickle=False))


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    """`np.savez` to exactly `path` (no `.npz` appended), atomically."""
    return atomic_write(path, lambda handle: np.savez(handle, **arrays))
