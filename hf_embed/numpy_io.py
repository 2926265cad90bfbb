"""Checked reading and atomic writing of the `.npy` / `.npz` files the embedding arguments name.

Reading never unpickles (`allow_pickle=False`) and every problem is a `ValueError` naming the argument, the path,
what was expected and what was found. Writing goes to a temporary file in the same folder, then `os.replace`, so a
killed process never leaves a truncated file behind.
"""

import os
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np


def _describe(path: str | os.PathLike) -> str:
    return f"{os.fspath(path)!r} (resolved: {os.path.abspath(path)!r})"


def _open_array_file(path: str | os.PathLike, argument: str):
    if not os.path.isfile(path):
        raise ValueError(f"{argument}: cannot read {_describe(path)}: no such file")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as err:  # object arrays and pickles are refused by allow_pickle=False
        raise ValueError(
            f"{argument}: {_describe(path)} holds pickled or object data, which is refused: {err}"
        ) from err
    except (OSError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{argument}: cannot read {_describe(path)}: not a valid numpy file ({err})") from err


def check_array(array: np.ndarray, expected_shape: tuple[int, ...], argument: str, where: str) -> np.ndarray:
    """Return `array` as float32 after checking dtype (integer or float), exact shape and finiteness."""
    if array.dtype.kind not in "iuf":
        raise ValueError(
            f"{argument}: {where} has dtype {array.dtype}; expected a numeric (integer or float) array "
            f"of shape {expected_shape}"
        )
    if tuple(array.shape) != tuple(expected_shape):
        raise ValueError(f"{argument}: {where} has shape {tuple(array.shape)}; expected shape {tuple(expected_shape)}")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise ValueError(f"{argument}: {where} holds {bad} NaN or infinite values; expected finite values")
    return array


def load_npy(path: str | os.PathLike, expected_shape: tuple[int, ...], argument: str) -> np.ndarray:
    """Read a `.npy` array of exactly `expected_shape` as float32."""
    loaded = _open_array_file(path, argument)
    if not isinstance(loaded, np.ndarray):
        loaded.close()
        raise ValueError(f"{argument}: {_describe(path)} is an .npz archive; expected a single .npy array")
    return check_array(loaded, expected_shape, argument, _describe(path))


def load_npz(path: str | os.PathLike, argument: str) -> dict[str, np.ndarray]:
    """Read every array of an `.npz` archive (unchecked shapes; the caller checks them)."""
    loaded = _open_array_file(path, argument)
    if isinstance(loaded, np.ndarray):
        raise ValueError(f"{argument}: {_describe(path)} is a single .npy array; expected an .npz archive")
    try:
        with loaded:
            return {key: loaded[key] for key in loaded.files}
    except ValueError as err:
        raise ValueError(
            f"{argument}: {_describe(path)} holds pickled or object data, which is refused: {err}"
        ) from err
    except (OSError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{argument}: cannot read {_describe(path)}: corrupt .npz archive ({err})") from err


def atomic_write(path: str | os.PathLike, write: Callable[[object], None]) -> Path:
    """Call `write(file_object)` on a temporary file beside `path`, then atomically rename it to `path`."""
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
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    """`np.save` to exactly `path` (no `.npy` appended), atomically."""
    return atomic_write(path, lambda handle: np.save(handle, array, allow_pickle=False))


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    """`np.savez` to exactly `path` (no `.npz` appended), atomically."""
    return atomic_write(path, lambda handle: np.savez(handle, **arrays))
