"""Pictures of how the token embeddings moved during training, drawn from the `wte-step*.npy` snapshots.

`export_wte_each_eval` writes one snapshot per evaluation (`wte-step000120.npy`, ...). From them one figure:

(a) the distribution of the row norms of each snapshot;
(b) the mean cosine similarity of every row to the same row in the first snapshot, against the step;
(c) a 2-D PCA of a fixed random sample of tokens at the first and the last snapshot, both projected on one basis
    (fitted to the two together), with a line from each token's first position to its last.

    python -m hf_embed.plot OUTPUT_DIR -o embeddings.png

The statistics need only numpy; drawing needs matplotlib (`pip install "hf-embed[plot]"`).
"""

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from transformers.utils import logging

logger = logging.get_logger(__name__)

_MAX_BOXES = 16  # panel (a) shows at most this many snapshots, evenly spaced, first and last included


@dataclass
class EmbeddingHistory:
    """What the figure shows, computed from the snapshots in step order."""

    steps: list[int]
    row_norms: list[np.ndarray]  # per snapshot, (V,)
    mean_cosine_to_first: np.ndarray  # (S,)
    sample_ids: np.ndarray  # (n,) token ids of the PCA sample
    first_sample: np.ndarray  # (n, dim) their rows in the first snapshot
    last_sample: np.ndarray  # (n, dim) and in the last


def find_snapshots(output_dir: str | Path, stem: str = "wte") -> list[tuple[int, Path]]:
    """The `{stem}-step{N}.npy` files in `output_dir`, as (step, path) sorted by step.

    Raises `ValueError` naming the folder when it does not exist or holds no snapshot, and naming both files
    when two snapshots have the same step.
    """
    folder = Path(output_dir)
    if not folder.is_dir():
        raise ValueError(f"OUTPUT_DIR={str(folder)!r} is not a folder")
    pattern = re.compile(rf"{re.escape(stem)}-step(\d+)\.npy")
    found: dict[int, Path] = {}
    for path in sorted(folder.iterdir()):
        match = pattern.fullmatch(path.name)
        if match is None or not path.is_file():
            continue
        step = int(match.group(1))
        if step in found:
            raise ValueError(f"{found[step]} and {path} are both snapshots of step {step}; keep one")
        found[step] = path
    if not found:
        raise ValueError(
            f"OUTPUT_DIR={str(folder)!r} holds no snapshots named {stem}-step*.npy; train with "
            "export_wte_npy and export_wte_each_eval=True to write them"
        )
    return sorted(found.items())


def _load(path: Path, expected_shape: tuple[int, ...] | None) -> np.ndarray:
    try:
        table = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"snapshot {str(path)!r} is not a readable .npy array: {err}") from err
    if table.ndim != 2:
        raise ValueError(f"snapshot {str(path)!r} has shape {table.shape}; expected a 2-D table (V, dim)")
    if expected_shape is not None and table.shape != expected_shape:
        raise ValueError(
            f"snapshot {str(path)!r} has shape {table.shape}, but the first snapshot has {expected_shape}; "
            "all snapshots of one run must have the same shape"
        )
    table = np.asarray(table, dtype=np.float64)
    if not np.isfinite(table).all():
        raise ValueError(f"snapshot {str(path)!r} contains NaN or infinite values")
    return table


def _row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of `a` with the same row of `b`; NaN where a row is zero.  -> (V,)"""
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = np.einsum("ij,ij->i", a, b)
    return np.divide(dots, norms, out=np.full_like(dots, np.nan), where=norms > 0)


def load_history(snapshots: list[tuple[int, Path]], sample_size: int = 256, seed: int = 0) -> EmbeddingHistory:
    """Read the snapshots one at a time (only the first is held) and compute what the figure shows."""
    if not snapshots:
        raise ValueError("no snapshots given")
    first = _load(snapshots[0][1], None)
    sample_ids = np.sort(np.random.default_rng(seed).choice(first.shape[0], min(sample_size, first.shape[0]), False))
    row_norms, cosines = [], []
    table = first
    for index, (_, path) in enumerate(snapshots):
        table = first if index == 0 else _load(path, first.shape)
        row_norms.append(np.linalg.norm(table, axis=1))
        row_cosines = _row_cosines(table, first)
        defined = ~np.isnan(row_cosines)
        cosines.append(row_cosines[defined].mean() if defined.any() else np.nan)
    return EmbeddingHistory(
        steps=[step for step, _ in snapshots],
        row_norms=row_norms,
        mean_cosine_to_first=np.asarray(cosines),
        sample_ids=sample_ids,
        first_sample=first[sample_ids],
        last_sample=table[sample_ids],
    )


def pca_2d(first: np.ndarray, last: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project both (n, dim) samples on the top two principal axes of the two together.  -> (n, 2), (n, 2)

    A one-dimensional table gets a zero second coordinate.
    """
    both = np.concatenate([first, last])
    center = both.mean(axis=0)
    _, _, vh = np.linalg.svd(both - center, full_matrices=False)
    axes = np.zeros((first.shape[1], 2))
    axes[:, : min(2, vh.shape[0])] = vh[:2].T
    return (first - center) @ axes, (last - center) @ axes


def draw_history(history: EmbeddingHistory, output_path: str | Path) -> Path:
    """Draw the three panels into one PNG (or any format matplotlib knows by the suffix) and return its path."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError('drawing needs matplotlib: pip install "hf-embed[plot]"') from err
    figure = Figure(figsize=(16, 4.8), layout="constrained")
    FigureCanvasAgg(figure)
    norms_axis, cosine_axis, pca_axis = figure.subplots(1, 3)
    _draw_norms(norms_axis, history)
    _draw_cosines(cosine_axis, history)
    _draw_pca(pca_axis, history)
    figure.suptitle(f"Token embeddings over training ({len(history.steps)} snapshots, V={len(history.row_norms[0])})")
    path = Path(output_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path


def _draw_norms(axis, history: EmbeddingHistory) -> None:
    count = len(history.steps)
    shown = np.unique(np.linspace(0, count - 1, min(count, _MAX_BOXES)).round().astype(int))
    axis.boxplot([history.row_norms[i] for i in shown], showfliers=False)
    axis.set_xticks(range(1, len(shown) + 1), [str(history.steps[i]) for i in shown], rotation=45)
    axis.set_xlabel("step")
    axis.set_ylabel("‖row‖₂")
    title = "(a) row norms per snapshot" + ("" if len(shown) == count else f" ({len(shown)} of {count})")
    axis.set_title(title)


def _draw_cosines(axis, history: EmbeddingHistory) -> None:
    axis.plot(history.steps, history.mean_cosine_to_first, marker="o")
    axis.set_xlabel("step")
    axis.set_ylabel("mean cosine similarity")
    axis.set_title(f"(b) each row vs. its step-{history.steps[0]} self")
    axis.grid(alpha=0.3)


def _draw_pca(axis, history: EmbeddingHistory) -> None:
    first, last = pca_2d(history.first_sample, history.last_sample)
    for (x0, y0), (x1, y1) in zip(first, last):
        axis.plot([x0, x1], [y0, y1], color="0.8", linewidth=0.5, zorder=1)
    axis.scatter(first[:, 0], first[:, 1], s=10, color="tab:blue", label=f"step {history.steps[0]}", zorder=2)
    axis.scatter(last[:, 0], last[:, 1], s=10, color="tab:orange", label=f"step {history.steps[-1]}", zorder=3)
    axis.set_xlabel("PC 1")
    axis.set_ylabel("PC 2")
    axis.set_title(f"(c) PCA of {len(history.sample_ids)} sampled tokens")
    axis.legend(loc="best")


def plot_embeddings(
    output_dir: str | Path,
    output_path: str | Path | None = None,
    stem: str = "wte",
    sample_size: int = 256,
    seed: int = 0,
) -> Path:
    """Draw the figure of the `{stem}-step*.npy` snapshots in `output_dir`; default file `output_dir/embeddings.png`."""
    history = load_history(find_snapshots(output_dir, stem), sample_size=sample_size, seed=seed)
    return draw_history(history, output_path if output_path is not None else Path(output_dir) / "embeddings.png")


def maybe_plot_embeddings(
    output_dir: str | Path, export_wte_npy: str | Path = "wte.npy", output_path: str | Path | None = None
) -> Path | None:
    """For training scripts: draw the figure of the snapshots of `export_wte_npy` (relative to `output_dir`, as the
    export callback resolves it) when there are any and matplotlib is installed; else return None.

    The figure goes to `output_path`, by default `output_dir/embeddings.png`.
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        logger.info("matplotlib is not installed: no embeddings figure (pip install 'hf-embed[plot]')")
        return None
    export = Path(export_wte_npy)
    folder = export.parent if export.is_absolute() else Path(output_dir) / export.parent
    try:
        snapshots = find_snapshots(folder, export.stem)
    except ValueError as err:
        logger.info("no embeddings figure: %s", err)
        return None
    path = draw_history(load_history(snapshots), output_path or Path(output_dir) / "embeddings.png")
    logger.info("embeddings figure written to %s", path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hf_embed.plot",
        description="Draw how the token embeddings moved, from the wte-step*.npy snapshots of a training run.",
    )
    parser.add_argument("output_dir", metavar="OUTPUT_DIR", help="the training run's folder with the snapshots")
    parser.add_argument("-o", "--output", help="image to write (default: OUTPUT_DIR/embeddings.png)")
    parser.add_argument("--stem", default="wte", help="snapshot names are STEM-stepN.npy (default: wte)")
    parser.add_argument("--sample_size", type=int, default=256, help="tokens in the PCA panel (default: 256)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the token sample (default: 0)")
    args = parser.parse_args(argv)
    if args.sample_size < 1:
        parser.error(f"--sample_size={args.sample_size} is not allowed: expected an integer >= 1")
    try:
        path = plot_embeddings(args.output_dir, args.output, args.stem, args.sample_size, args.seed)
    except (ValueError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
