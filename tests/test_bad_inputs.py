"""A catalogue of bad inputs (SPEC §6): config values, combinations, `.npy` / `.npz` files and command-line flags.

Each case raises `ValueError` whose message names the argument (and, for a file, the file), before any training
step, and leaves the folder it ran in exactly as it was (no temporary or partial file). The config cases here
complement `test_configuration.py::BAD_CONFIGS` (no case is repeated); the file cases go through building a model
from its config, the path a training run takes. Command-line cases run `run_clm.py` and check that its output
folder stays empty.
"""

import math
import pickle
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from hf_embed import HfEmbedConfig, HfEmbedForCausalLM

V, D, R = 12, 16, 4  # vocab, width, factorized table width
BASE = dict(vocab_size=V, n_embd=D, n_layer=1, n_head=2, block_size=8)
FACTORIZED = dict(BASE, n_embd_wte=R)
ROOT = Path(__file__).resolve().parent.parent


class CodeOnLoad:
    """Unpickling this creates a file: a payload that must never run."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@dataclass
class Case:
    """`config`: the config keyword arguments; `files`: name -> writer(path) run in the folder first;
    `argument`: what the message must name; `fragment`: what else it must say."""

    id: str
    config: dict
    argument: str
    fragment: str = ""
    files: dict[str, Callable[[Path], None]] = field(default_factory=dict)


def npy(array) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        with open(path, "wb") as handle:  # exactly this name: np.save(path) would append ".npy"
            np.save(handle, np.asarray(array))

    return write


def npz(**arrays) -> Callable[[Path], None]:
    return lambda path: np.savez(path, **arrays)


def raw(data: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(data)


def truncated_npy(path: Path) -> None:
    np.save(path, np.ones((V, D), np.float32))
    path.write_bytes(path.read_bytes()[:200])


def truncated_npz(path: Path) -> None:
    with open(path, "wb") as handle:
        np.savez(handle, scale_up=np.ones((R, D), np.float32))
    path.write_bytes(path.read_bytes()[:-60])


def object_npy(path: Path) -> None:
    np.save(path, np.array([CodeOnLoad(str(path.parent / "code-ran"))] * V, dtype=object), allow_pickle=True)


def object_npz(path: Path) -> None:
    with open(path, "wb") as handle:
        np.savez(handle, scale_up=np.array([CodeOnLoad(str(path.parent / "code-ran"))], dtype=object))


def plain_pickle(path: Path) -> None:
    path.write_bytes(pickle.dumps(np.ones((V, D), np.float32)))


def a_directory(path: Path) -> None:
    path.mkdir()


def npz_archive(path: Path) -> None:
    with open(path, "wb") as handle:
        np.savez(handle, wte=np.ones((V, D), np.float32))


def zip_without_arrays(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "no arrays here")


GOOD_TABLE = np.ones((V, D), np.float32)
GOOD_SCALE = np.ones((R, D), np.float32)
WTE = dict(BASE, import_wte_npy="wte.npy")
INIT = dict(BASE, init_variant="numpy_import", init_wte_npy="init.npy")
SCALE = dict(FACTORIZED, import_scale_matrices_npz="scale.npz")
SCALE_UNTIED = dict(SCALE, n_embd_wte_scale_tying=False)

CASES = [
    # --- config values: types, ranges, non-finite numbers ---
    Case("n_embd_wte-bool", dict(BASE, n_embd_wte=True), "n_embd_wte", "int"),
    Case("vocab_size-str", dict(BASE, vocab_size="12"), "vocab_size", "int"),
    Case("block_size-negative", dict(BASE, block_size=-5), "block_size", ">= 1"),
    Case("alias-hidden_size-zero", dict(BASE, hidden_size=0), "n_embd", ">= 1"),
    Case("alias-num_attention_heads", dict(BASE, num_attention_heads=3), "n_head", "multiple"),
    Case("dropout-nan", dict(BASE, dropout=math.nan), "dropout", "[0, 1)"),
    Case("initializer_range-inf", dict(BASE, initializer_range=math.inf), "initializer_range", "finite"),
    Case("layer_norm_epsilon-inf", dict(BASE, layer_norm_epsilon=math.inf), "layer_norm_epsilon", "finite"),
    Case("fire_num_hidden_layers-bool", dict(BASE, fire_num_hidden_layers=True), "fire_num_hidden_layers", "int"),
    Case("fire_mlp_width-float", dict(BASE, fire_mlp_width=2.5), "fire_mlp_width", "int"),
    Case("import_wte_freeze-str", dict(BASE, import_wte_freeze="yes"), "import_wte_freeze", "bool"),
    Case("rope_variant-none", dict(BASE, rope_variant=None), "rope_variant", "str"),
    Case("init_variant-case", dict(BASE, init_variant="Gaussian"), "init_variant", "'gaussian'"),
    Case("rope_theta-nan", dict(BASE, use_rotary_embeddings=True, rope_theta=math.nan), "rope_theta", "finite"),
    Case("fire_init_L-inf", dict(BASE, use_fire_embeddings=True, fire_init_L=math.inf), "fire_init_L", "finite"),
    Case("fire_log_bias-zero", dict(BASE, use_fire_embeddings=True, fire_log_bias=0.0), "fire_log_bias", "> 0"),
    Case("embedding_mean_init-nan", dict(BASE, embedding_mean_init=math.nan), "embedding_mean_init", "finite"),
    Case("init_radius-nan", dict(BASE, init_variant="angle_hypersphere", init_radius=math.nan), "init_radius", ""),
    Case("activation_function", dict(BASE, activation_function="swishy"), "activation_function", "gelu_new"),
    Case("attn_implementation", dict(BASE, attn_implementation="bogus"), "attn_implementation", "eager"),
    # --- combinations ---
    Case(
        "soap-sym_rot_num_angles",
        dict(BASE, use_rotary_embeddings=True, rope_variant="soap", sym_rot_num_angles=-1),
        "sym_rot_num_angles",
        ">= 1",
    ),
    Case("rope-head_dim-1", dict(BASE, n_head=16, use_rotary_embeddings=True), "rope_length", "even head dimension"),
    Case("rope_length-odd-partial", dict(BASE, use_rotary_embeddings=True, rope_length=5), "rope_length", "[2, 8]"),
    Case(
        "gaussian_max_norm-nan",
        dict(BASE, init_variant="gaussian_norm_range", gaussian_max_norm=math.nan),
        "gaussian_max_norm",
        "",
    ),
    Case(
        "gaussian_norm_range-unreachable",
        dict(BASE, init_variant="gaussian_norm_range", gaussian_min_norm=100.0, gaussian_max_norm=101.0),
        "gaussian_min_norm",
        "rounds",
    ),
    Case("onehot-factorized", dict(BASE, n_embd_wte=8, init_variant="onehot"), "init_variant", "dimension 8"),
    Case("unique_hypercube-r1", dict(BASE, n_embd_wte=1, init_variant="unique_hypercube"), "init_variant", "2**0"),
    Case("scale-export-unfactorized", dict(BASE, export_scale_matrices_npz="s.npz"), "export_scale_matrices_npz"),
    Case(
        "each-eval-scale-without-path",
        dict(FACTORIZED, export_scale_matrices_each_eval=True),
        "export_scale_matrices_each_eval",
        "export_scale_matrices_npz",
    ),
    Case(
        "each-eval-wte-without-path-factorized",
        dict(FACTORIZED, export_wte_each_eval=True),
        "export_wte_each_eval",
        "export_wte_npy",
    ),
    # --- import_wte_npy ---
    Case("wte-missing", WTE, "import_wte_npy", "wte.npy"),
    Case("wte-directory", WTE, "import_wte_npy", "directory", {"wte.npy": a_directory}),
    Case("wte-shape", WTE, "import_wte_npy", f"({V}, {D})", {"wte.npy": npy(np.ones((V, D + 1)))}),
    Case("wte-transposed", WTE, "import_wte_npy", f"({D}, {V})", {"wte.npy": npy(np.ones((D, V)))}),
    Case("wte-1d", WTE, "import_wte_npy", "shape", {"wte.npy": npy(np.ones(V * D))}),
    Case("wte-complex", WTE, "import_wte_npy", "complex", {"wte.npy": npy(np.ones((V, D), np.complex64))}),
    Case("wte-bool", WTE, "import_wte_npy", "bool", {"wte.npy": npy(np.ones((V, D), bool))}),
    Case("wte-strings", WTE, "import_wte_npy", "dtype", {"wte.npy": npy(np.full((V, D), "x"))}),
    Case("wte-object", WTE, "import_wte_npy", "pickle", {"wte.npy": object_npy}),
    Case("wte-raw-pickle", WTE, "import_wte_npy", "wte.npy", {"wte.npy": plain_pickle}),
    Case("wte-nan", WTE, "import_wte_npy", "NaN", {"wte.npy": npy(np.where(GOOD_TABLE > 0, np.nan, 0))}),
    Case("wte-inf", WTE, "import_wte_npy", "infinite", {"wte.npy": npy(np.full((V, D), -np.inf, np.float32))}),
    Case("wte-float32-overflow", WTE, "import_wte_npy", "wte.npy", {"wte.npy": npy(np.full((V, D), 1e300))}),
    Case("wte-truncated", WTE, "import_wte_npy", "wte.npy", {"wte.npy": truncated_npy}),
    Case("wte-garbage", WTE, "import_wte_npy", "wte.npy", {"wte.npy": raw(b"\x00not numpy at all" * 8)}),
    Case("wte-empty", WTE, "import_wte_npy", "wte.npy", {"wte.npy": raw(b"")}),
    Case("wte-is-npz", WTE, "import_wte_npy", ".npz", {"wte.npy": npz_archive}),
    Case(
        "wte-factorized-shape",
        dict(FACTORIZED, import_wte_npy="wte.npy"),
        "import_wte_npy",
        f"({V}, {R})",
        {"wte.npy": npy(GOOD_TABLE)},
    ),
    # --- init_wte_npy (init_variant='numpy_import') ---
    Case("init-missing", INIT, "init_wte_npy", "init.npy"),
    Case("init-shape", INIT, "init_wte_npy", f"({V}, {D})", {"init.npy": npy(np.ones((V - 1, D)))}),
    Case("init-object", INIT, "init_wte_npy", "pickle", {"init.npy": object_npy}),
    Case("init-nan", INIT, "init_wte_npy", "NaN", {"init.npy": npy(np.full((V, D), np.nan))}),
    # --- import_scale_matrices_npz ---
    Case("scale-missing", SCALE, "import_scale_matrices_npz", "scale.npz"),
    Case(
        "scale-upstream-orientation",
        SCALE,
        "import_scale_matrices_npz",
        f"({R}, {D})",
        {"scale.npz": npz(scale_up=np.ones((D, R)))},
    ),
    Case(
        "scale-untied-missing-key",
        SCALE_UNTIED,
        "import_scale_matrices_npz",
        "scale_down",
        {"scale.npz": npz(scale_up=GOOD_SCALE)},
    ),
    Case(
        "scale-tied-differ",
        SCALE,
        "import_scale_matrices_npz",
        "n_embd_wte_scale_tying",
        {"scale.npz": npz(scale_up=GOOD_SCALE, scale_down=2 * GOOD_SCALE)},
    ),
    Case("scale-wrong-key", SCALE, "import_scale_matrices_npz", "scale_up", {"scale.npz": npz(up=GOOD_SCALE)}),
    Case(
        "scale-nan",
        SCALE_UNTIED,
        "import_scale_matrices_npz",
        "NaN",
        {"scale.npz": npz(scale_up=GOOD_SCALE, scale_down=np.full((R, D), np.nan))},
    ),
    Case("scale-object", SCALE, "import_scale_matrices_npz", "pickle", {"scale.npz": object_npz}),
    Case("scale-truncated", SCALE, "import_scale_matrices_npz", "scale.npz", {"scale.npz": truncated_npz}),
    Case("scale-not-arrays", SCALE, "import_scale_matrices_npz", "scale.npz", {"scale.npz": zip_without_arrays}),
    Case("scale-is-npy", SCALE, "import_scale_matrices_npz", ".npy", {"scale.npz": npy(GOOD_SCALE)}),
]


def _listing(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def test_the_catalogue_is_large_and_ids_are_unique():
    assert len(CASES) >= 30
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_raises_a_value_error_naming_the_argument_and_writes_nothing(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # import paths are relative, resolved against the working directory
    for name, write in case.files.items():
        write(tmp_path / name)
    before = _listing(tmp_path)
    with pytest.raises(ValueError) as raised:
        HfEmbedForCausalLM(HfEmbedConfig(**case.config))
    message = str(raised.value)
    assert case.argument in message
    assert case.fragment in message
    for name in case.files:
        assert name in message  # a file case names the file
    assert _listing(tmp_path) == before  # nothing written, nothing removed, no payload ran
    assert not (tmp_path / "code-ran").exists()


# ------------------------------------------------------------------------------------------- command line
# Each case runs `run_clm.main` (in this process: no interpreter start-up per case) on a tiny text with one bad flag:
# it must stop with an error naming the flag before any training step and leave the output folder empty or absent.
CLI_BASE = [
    "--n_layer", "1", "--n_embd", "16", "--n_head", "2", "--block_size", "16", "--vocab_size", "300",
    "--max_steps", "2", "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "2",
    "--eval_steps", "1", "--save_steps", "1", "--logging_steps", "1", "--report_to", "none",
]  # fmt: skip

CLI_CASES = [
    ("n_embd_wte-zero", ["--n_embd_wte", "0"], "n_embd_wte"),
    ("n_embd_wte-text", ["--n_embd_wte", "eight"], "n_embd_wte"),
    ("rope_variant", ["--use_rotary_embeddings", "--rope_variant", "alibi"], "rope_variant"),
    ("rope_length-odd", ["--use_rotary_embeddings", "--rope_length", "3"], "rope_length"),
    ("init_variant", ["--init_variant", "xavier"], "init_variant"),
    ("onehot-needs", ["--init_variant", "onehot"], "init_variant"),
    ("shared-fire-without-fire", ["--shared_fire_embeddings"], "shared_fire_embeddings"),
    ("scale-without-factorization", ["--export_scale_matrices_npz", "s.npz"], "export_scale_matrices_npz"),
    ("import-wte-missing", ["--import_wte_npy", "{data}/missing-wte.npy"], "import_wte_npy"),
    ("import-wte-shape", ["--import_wte_npy", "{data}/bad-shape.npy"], "import_wte_npy"),
    ("import-wte-pickled", ["--import_wte_npy", "{data}/object.npy"], "import_wte_npy"),
    ("scale-npz-corrupt", ["--n_embd_wte", "4", "--import_scale_matrices_npz", "{data}/corrupt.npz"], "scale_matrices"),
    ("config_overrides-unknown", ["--config_overrides", "n_embd_wtee=4"], "n_embd_wtee"),
    ("config_overrides-value", ["--config_overrides", "rope_length=two"], "rope_length"),
    ("unknown-flag", ["--use_rotary_embedings"], "--use_rotary_embedings"),  # a typo, not an abbreviation
    ("bool-flag-value", ["--use_fire_embeddings", "maybe"], "use_fire_embeddings"),
    ("block_size-one", ["--block_size", "1"], "block_size"),
    ("train_file-missing", ["--train_file", "{data}/missing.txt"], "missing.txt"),
    ("train_file-extension", ["--train_file", "{data}/corpus.pdf"], "corpus.pdf"),
    ("eval_lengths", ["--eval_lengths", "64,x"], "eval_lengths"),
]


@pytest.fixture(scope="module")
def run_clm():
    if not (ROOT / "run_clm.py").is_file():
        pytest.fail("run_clm.py does not exist")
    sys.path.insert(0, str(ROOT))
    try:
        import run_clm
    finally:
        sys.path.remove(str(ROOT))
    return run_clm


@pytest.fixture(scope="module")
def cli_data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cli")
    text = "\n\n".join(f"Paragraph {i}: the quick brown fox jumps over the lazy dog {i} times." for i in range(80))
    (folder / "corpus.txt").write_text(text)
    (folder / "corpus.pdf").write_text(text)
    np.save(folder / "bad-shape.npy", np.ones((3, 3), np.float32))
    object_npy(folder / "object.npy")
    truncated_npz(folder / "corrupt.npz")
    return folder


@pytest.mark.parametrize(("flags", "argument"), [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_bad_command_line_flag_fails_before_training_and_writes_nothing(
    flags, argument, run_clm, cli_data, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    output = tmp_path / "out"
    flags = [flag.replace("{data}", str(cli_data)) for flag in flags]
    train_file = [] if "--train_file" in flags else ["--train_file", str(cli_data / "corpus.txt")]

    def no_training_step(*args, **kwargs):
        raise AssertionError("a training step ran")

    monkeypatch.setattr("transformers.Trainer.training_step", no_training_step)
    with pytest.raises((ValueError, SystemExit)) as raised:
        run_clm.main([*train_file, "--output_dir", str(output), *CLI_BASE, *flags])
    captured = capsys.readouterr()
    message = str(raised.value) if raised.type is ValueError else captured.err  # argparse prints, then exits 2
    if raised.type is SystemExit:
        assert raised.value.code == 2
    assert argument in message, message[-2000:]
    assert not output.exists() or sorted(p.name for p in output.rglob("*")) == []
    assert not (cli_data / "code-ran").exists()
