"""numpy_io: checked reading (every bad file is a ValueError naming argument, path, expected, found) and atomic
writing of the .npy / .npz files the embedding arguments name."""

import os
import pickle
import tempfile

os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="hf_embed_test_home_")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from hf_embed.numpy_io import atomic_write, check_array, load_npy, load_npz, save_npy, save_npz  # noqa: E402

SHAPE = (5, 3)
ARG = "import_wte_npy"


def expect_error(path, *fragments, shape=SHAPE):
    """load_npy must raise a ValueError naming the argument, the path and every fragment."""
    with pytest.raises(ValueError) as info:
        load_npy(path, shape, ARG)
    message = str(info.value)
    for fragment in (ARG, os.fspath(path), *fragments):
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


# ---------------------------------------------------------------- reading what is valid


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int8, np.int64, np.uint16])
def test_numeric_arrays_are_read_exactly_as_float32(tmp_path, dtype):
    offset = 0 if np.dtype(dtype).kind == "u" else 7  # negative values where the dtype has them
    array = (np.arange(15).reshape(SHAPE) - offset).astype(dtype)
    np.save(tmp_path / "a.npy", array)
    loaded = load_npy(tmp_path / "a.npy", SHAPE, ARG)
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, array.astype(np.float32))


def test_relative_path_resolves_against_the_working_directory(tmp_path, monkeypatch):
    array = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    np.save(tmp_path / "rel.npy", array)
    monkeypatch.chdir(tmp_path)
    np.testing.assert_array_equal(load_npy("rel.npy", SHAPE, ARG), array)


def test_npz_arrays_are_all_returned(tmp_path):
    up, down = np.ones((2, 4)), np.zeros((2, 4))
    np.savez(tmp_path / "s.npz", scale_up=up, scale_down=down)
    arrays = load_npz(tmp_path / "s.npz", "import_scale_matrices_npz")
    assert sorted(arrays) == ["scale_down", "scale_up"]
    np.testing.assert_array_equal(arrays["scale_up"], up)
    np.testing.assert_array_equal(arrays["scale_down"], down)


# ---------------------------------------------------------------- refusing what is not


def test_missing_file(tmp_path):
    expect_error(tmp_path / "absent.npy", "no such file", str(SHAPE))


def test_directory_instead_of_file(tmp_path):
    expect_error(tmp_path, "a directory", str(SHAPE))


def test_wrong_shape_names_expected_and_found(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((3, 5), np.float32))
    expect_error(tmp_path / "a.npy", "(3, 5)", str(SHAPE))


@pytest.mark.parametrize(
    "array",
    [
        np.array([["a", "b", "c"]] * 5),
        np.ones(SHAPE, dtype=bool),
        np.ones(SHAPE, dtype=np.complex64),
    ],
    ids=["strings", "bool", "complex"],
)
def test_non_numeric_dtype(tmp_path, array):
    np.save(tmp_path / "a.npy", array)
    expect_error(tmp_path / "a.npy", str(array.dtype), "numeric", str(SHAPE))


def test_object_array(tmp_path):
    np.save(tmp_path / "a.npy", np.array([[1, None, 2]] * 5, dtype=object), allow_pickle=True)
    expect_error(tmp_path / "a.npy", "pickled or object", "allow_pickle=False")


def test_pickled_array_is_never_unpickled(tmp_path):
    path = tmp_path / "a.npy"
    with open(path, "wb") as f:
        pickle.dump(np.zeros(SHAPE, np.float32), f)
    expect_error(path, "neither a .npy nor an .npz file", "allow_pickle=False", str(SHAPE))


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_values(tmp_path, value):
    array = np.zeros(SHAPE, np.float32)
    array[2, 1] = value
    np.save(tmp_path / "a.npy", array)
    expect_error(tmp_path / "a.npy", "1 NaN or infinite", "(2, 1)", "finite")


def test_values_beyond_float32_are_refused_not_turned_into_inf(tmp_path):
    np.save(tmp_path / "a.npy", np.full(SHAPE, 1e300))
    expect_error(tmp_path / "a.npy", "float32 range")


def test_empty_garbage_or_truncated_file(tmp_path):
    (tmp_path / "empty.npy").write_bytes(b"")
    (tmp_path / "junk.npy").write_bytes(b"not a numpy file at all")
    np.save(tmp_path / "whole.npy", np.zeros(SHAPE, np.float32))
    (tmp_path / "cut.npy").write_bytes((tmp_path / "whole.npy").read_bytes()[:-8])
    expect_error(tmp_path / "empty.npy", "neither a .npy nor an .npz file")
    expect_error(tmp_path / "junk.npy", "neither a .npy nor an .npz file", "b'not a '")
    expect_error(tmp_path / "cut.npy", "corrupt file")


def test_npz_where_npy_is_expected_and_vice_versa(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.zeros(SHAPE))
    expect_error(tmp_path / "a.npz", ".npz archive", ".npy file")
    np.save(tmp_path / "b.npy", np.zeros(SHAPE))
    with pytest.raises(ValueError, match="import_scale_matrices_npz.*single .npy array; expected an .npz"):
        load_npz(tmp_path / "b.npy", "import_scale_matrices_npz")


def test_npz_with_object_array(tmp_path):
    np.savez(tmp_path / "a.npz", scale_up=np.array([1, None], dtype=object))
    with pytest.raises(ValueError, match="import_scale_matrices_npz.*pickled or object"):
        load_npz(tmp_path / "a.npz", "import_scale_matrices_npz")


def test_corrupt_npz(tmp_path):
    np.savez(tmp_path / "whole.npz", scale_up=np.zeros((4, 4)))
    (tmp_path / "cut.npz").write_bytes((tmp_path / "whole.npz").read_bytes()[:40])
    with pytest.raises(ValueError, match="import_scale_matrices_npz: cannot read .*cut.npz.*corrupt file"):
        load_npz(tmp_path / "cut.npz", "import_scale_matrices_npz")


def test_missing_npz(tmp_path):
    with pytest.raises(ValueError, match="import_scale_matrices_npz: cannot read .*absent.npz.*no such file"):
        load_npz(tmp_path / "absent.npz", "import_scale_matrices_npz")


def test_check_array_names_where():
    with pytest.raises(ValueError, match=r"arg: 'f.npz' key 'scale_up' has shape \(2, 2\); expected shape \(2, 3\)"):
        check_array(np.zeros((2, 2)), (2, 3), "arg", "'f.npz' key 'scale_up'")


# ---------------------------------------------------------------- writing


def test_save_npy_writes_exactly_the_path_and_round_trips(tmp_path):
    array = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
    path = tmp_path / "sub" / "table.bin"  # no .npy appended, parent folder created
    save_npy(path, array)
    assert sorted(os.listdir(tmp_path / "sub")) == ["table.bin"]
    np.testing.assert_array_equal(load_npy(path, SHAPE, ARG), array)


def test_save_npz_round_trips(tmp_path):
    up = np.arange(6, dtype=np.float32).reshape(2, 3)
    save_npz(tmp_path / "m.npz", scale_up=up, scale_down=-up)
    arrays = load_npz(tmp_path / "m.npz", "x")
    np.testing.assert_array_equal(arrays["scale_up"], up)
    np.testing.assert_array_equal(arrays["scale_down"], -up)
    assert sorted(os.listdir(tmp_path)) == ["m.npz"]


def test_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "t.npy"
    save_npy(path, np.ones(SHAPE, np.float32))

    def broken(handle):
        handle.write(b"partial")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(path, broken)
    assert os.listdir(tmp_path) == ["t.npy"]
    np.testing.assert_array_equal(load_npy(path, SHAPE, ARG), np.ones(SHAPE, np.float32))
