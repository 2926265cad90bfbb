"""hf_embed.plot: statistics of the wte-step*.npy snapshots, the figure, and the CLI's errors."""

import numpy as np
import pytest

from hf_embed.plot import find_snapshots, load_history, main, maybe_plot_embeddings, pca_2d

pytest.importorskip("matplotlib")

V, DIM = 300, 8


def write_snapshots(folder, tables: dict[str, np.ndarray]) -> None:
    for name, table in tables.items():
        np.save(folder / name, table.astype(np.float32))


def drifting_tables(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    tables = [rng.normal(size=(V, DIM))]
    for _ in range(count - 1):
        tables.append(tables[-1] * 1.2 + rng.normal(scale=0.4, size=(V, DIM)))
    return tables


def test_cli_renders_a_png_that_is_not_blank(tmp_path, capsys):
    tables = drifting_tables(5)
    write_snapshots(tmp_path, {f"wte-step{100 * i:06d}.npy": t for i, t in enumerate(tables)})
    out = tmp_path / "figures" / "embeddings.png"
    assert main([str(tmp_path), "-o", str(out), "--sample_size", "50"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out

    from matplotlib import image

    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = image.imread(out)[..., :3]  # (height, width, rgb) in [0, 1]
    assert pixels.shape[0] > 300 and pixels.shape[1] > 1000
    not_white = (pixels < 0.95).any(axis=-1).mean()
    assert 0.02 < not_white < 0.9, not_white
    assert len(np.unique(pixels.reshape(-1, 3).round(2), axis=0)) > 20  # lines, boxes, two scatter colours, text


def test_statistics_against_known_motions(tmp_path):
    rng = np.random.default_rng(1)
    first = rng.normal(size=(V, DIM))
    # step 5 scales every row (cosine 1, norms x3); step 40 flips every row (cosine -1); names padded differently
    write_snapshots(tmp_path, {"wte-step0.npy": first, "wte-step5.npy": 3 * first, "wte-step000040.npy": -first})
    history = load_history(find_snapshots(tmp_path), sample_size=20, seed=0)
    assert history.steps == [0, 5, 40]
    np.testing.assert_allclose(history.mean_cosine_to_first, [1.0, 1.0, -1.0], atol=1e-6)
    np.testing.assert_allclose(history.row_norms[1], 3 * np.linalg.norm(first, axis=1), rtol=1e-5)
    assert len(set(history.sample_ids)) == 20
    np.testing.assert_allclose(history.last_sample, -first[history.sample_ids], rtol=1e-6)


def test_zero_rows_are_left_out_of_the_mean_cosine(tmp_path):
    first = np.eye(V, DIM)  # rows DIM.. are zero: their cosine is undefined
    write_snapshots(tmp_path, {"wte-step1.npy": first, "wte-step2.npy": first * 2})
    assert load_history(find_snapshots(tmp_path)).mean_cosine_to_first.tolist() == pytest.approx([1.0, 1.0])


def test_pca_keeps_distances_of_points_in_a_plane():
    rng = np.random.default_rng(2)
    plane = np.linalg.qr(rng.normal(size=(DIM, 2)))[0]  # (DIM, 2) orthonormal
    first, last = rng.normal(size=(30, 2)) @ plane.T, rng.normal(size=(30, 2)) @ plane.T
    first_2d, last_2d = pca_2d(first, last)
    both, both_2d = np.concatenate([first, last]), np.concatenate([first_2d, last_2d])
    distances = np.linalg.norm(both[:, None] - both[None], axis=-1)
    np.testing.assert_allclose(np.linalg.norm(both_2d[:, None] - both_2d[None], axis=-1), distances, atol=1e-9)
    one_dim, _ = pca_2d(first[:, :1], last[:, :1])  # a factorized table may have width 1
    assert one_dim.shape == (30, 2) and not one_dim[:, 1].any()


def test_a_folder_without_snapshots_is_named(tmp_path, capsys):
    (tmp_path / "wte.npy").write_bytes(b"")  # the final export is not a snapshot
    with pytest.raises(ValueError, match=rf"OUTPUT_DIR='{tmp_path}' holds no snapshots named wte-step\*\.npy"):
        find_snapshots(tmp_path)
    assert main([str(tmp_path)]) == 2
    assert "holds no snapshots" in capsys.readouterr().err
    with pytest.raises(ValueError, match="is not a folder"):
        find_snapshots(tmp_path / "missing")
    assert maybe_plot_embeddings(tmp_path) is None and not (tmp_path / "embeddings.png").exists()


def test_snapshots_of_differing_shapes_name_the_file(tmp_path, capsys):
    write_snapshots(tmp_path, {"wte-step10.npy": np.ones((V, DIM)), "wte-step20.npy": np.ones((V, DIM + 1))})
    with pytest.raises(ValueError, match=r"wte-step20\.npy' has shape \(300, 9\), but the first snapshot has"):
        load_history(find_snapshots(tmp_path))
    assert main([str(tmp_path)]) == 2
    assert "wte-step20.npy" in capsys.readouterr().err


@pytest.mark.parametrize(
    "array, message",
    [(np.ones(5), r"expected a 2-D table"), (np.full((4, 2), np.nan), "NaN or infinite")],
)
def test_unusable_snapshots_name_the_file(tmp_path, array, message):
    np.save(tmp_path / "wte-step1.npy", array)
    with pytest.raises(ValueError, match=rf"wte-step1\.npy.*{message}"):
        load_history(find_snapshots(tmp_path))


def test_two_snapshots_of_one_step_are_refused(tmp_path):
    write_snapshots(tmp_path, {"wte-step7.npy": np.ones((3, 2)), "wte-step000007.npy": np.ones((3, 2))})
    with pytest.raises(ValueError, match="both snapshots of step 7"):
        find_snapshots(tmp_path)


def test_maybe_plot_draws_the_snapshots_of_the_export_path(tmp_path):
    (tmp_path / "emb").mkdir()
    write_snapshots(tmp_path / "emb", {f"table-step{i}.npy": t for i, t in enumerate(drifting_tables(2))})
    assert maybe_plot_embeddings(tmp_path) is None  # no wte-step*.npy in the run's folder
    assert maybe_plot_embeddings(tmp_path, export_wte_npy="emb/table.npy") == tmp_path / "embeddings.png"
    assert (tmp_path / "embeddings.png").stat().st_size > 10_000
