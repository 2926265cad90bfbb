"""Nothing is ever unpickled: a source scan, and crafted files that would run code if they were.

The scan parses every module of the package and `run_clm.py` and refuses: `pickle` / `cPickle` / `dill` /
`joblib` / `marshal` loading calls, `torch.load` without a literal `weights_only=True`, and `np.load` with any
`allow_pickle` other than a literal False. The crafted files carry a `__reduce__` payload that would create a marker
file: every reader must refuse them (our readers with a `ValueError` naming the file), and the marker must never
appear: `.npy` / `.npz` imports, nanoGPT checkpoints, and the Trainer's own `.pt` files when resuming.
"""

import ast
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import hf_embed
from hf_embed import HfEmbedConfig, HfEmbedForCausalLM

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted((ROOT / "hf_embed").glob("*.py")) + [p for p in [ROOT / "run_clm.py"] if p.exists()]
UNPICKLERS = {"pickle", "cPickle", "_pickle", "dill", "joblib", "marshal", "cloudpickle", "shelve"}
LOADING_CALLS = {"load", "loads", "Unpickler", "open"}  # shelve.open unpickles too
NUMPY_NAMES = {"np", "numpy"}


def _dotted(node: ast.AST) -> str:
    """`np.load` -> "np.load"; anything that is not a plain dotted name -> ""."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


def _keyword(call: ast.Call, name: str):
    """The literal value of keyword `name` (ast.Constant), `...` when absent, `None`-like sentinel when not literal."""
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value.value if isinstance(keyword.value, ast.Constant) else "<not a literal>"
        if keyword.arg is None:  # **kwargs could carry anything
            return "<**kwargs>"
    return ...


def unsafe_calls(source: str, filename: str = "<source>") -> list[str]:
    """Every call in `source` that could unpickle, as "file:line: what"."""
    tree = ast.parse(source, filename)
    aliases: dict[str, str] = {}  # local name -> module or module.function it stands for
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                aliases[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        head, _, rest = name.partition(".")
        resolved = aliases.get(head, head) + (f".{rest}" if rest else "")
        module, _, function = resolved.rpartition(".")
        where = f"{filename}:{node.lineno}: {name}"
        if module.split(".")[0] in UNPICKLERS and function in LOADING_CALLS:
            found.append(f"{where} unpickles")
        elif resolved == "torch.load" and _keyword(node, "weights_only") is not True:
            found.append(f"{where} without weights_only=True")
        elif resolved in {"numpy.load", "np.load"} and _keyword(node, "allow_pickle") not in (False, ...):
            found.append(f"{where} with allow_pickle={_keyword(node, 'allow_pickle')!r}")
    return found


def test_the_scan_covers_the_package_and_the_script():
    names = {p.name for p in SOURCES}
    assert {"modeling_hf_embed.py", "numpy_io.py", "embeddings.py", "configuration_hf_embed.py"} <= names
    assert len(SOURCES) >= 8


@pytest.mark.parametrize("path", SOURCES, ids=[p.name for p in SOURCES])
def test_no_source_file_unpickles(path):
    assert unsafe_calls(path.read_text(encoding="utf-8"), path.name) == []


@pytest.mark.parametrize(
    "snippet",
    [
        "import pickle\npickle.load(f)",
        "import pickle as p\np.loads(b)",
        "from pickle import loads\nloads(b)",
        "from pickle import Unpickler\nUnpickler(f).load()",
        "import dill\ndill.load(f)",
        "import torch\ntorch.load(path)",
        "import torch\ntorch.load(path, weights_only=False)",
        "import torch\ntorch.load(path, weights_only=flag)",
        "import torch\ntorch.load(path, **options)",
        "from torch import load\nload(path)",
        "import numpy as np\nnp.load(path, allow_pickle=True)",
        "import numpy\nnumpy.load(path, allow_pickle=flag)",
        "import shelve\nshelve.open(path)",
    ],
)
def test_the_scan_catches_every_unsafe_form(snippet):
    assert len(unsafe_calls(snippet)) == 1


@pytest.mark.parametrize(
    "snippet",
    [
        "import torch\ntorch.load(path, map_location='cpu', weights_only=True)",
        "import numpy as np\nnp.load(path)",
        "import numpy as np\nnp.load(path, allow_pickle=False)",
        "import pickle\nraise pickle.UnpicklingError('x')",
        "open(path).read()",
    ],
)
def test_the_scan_accepts_safe_forms(snippet):
    assert unsafe_calls(snippet) == []


# ------------------------------------------------------------------------------------------- crafted files
class CodeOnLoad:
    """Unpickling this creates `marker`: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


V, D, R = 10, 8, 4
CONFIG = dict(vocab_size=V, n_embd=D, n_layer=1, n_head=2, block_size=8)


def _object_npy(path: Path, marker: Path) -> Path:
    np.save(path, np.array([CodeOnLoad(marker)] * V, dtype=object), allow_pickle=True)
    return path


def _object_npz(path: Path, marker: Path) -> Path:
    np.savez(path, scale_up=np.array([CodeOnLoad(marker)], dtype=object), scale_down=np.ones((R, D)))
    return path


@pytest.mark.parametrize(
    "load",
    [
        lambda tmp, m: HfEmbedForCausalLM(HfEmbedConfig(**CONFIG)).import_wte_npy(str(_object_npy(tmp / "w.npy", m))),
        lambda tmp, m: HfEmbedForCausalLM(HfEmbedConfig(**CONFIG, import_wte_npy=str(_object_npy(tmp / "w.npy", m)))),
        lambda tmp, m: HfEmbedForCausalLM(
            HfEmbedConfig(**CONFIG, init_variant="numpy_import", init_wte_npy=str(_object_npy(tmp / "w.npy", m)))
        ),
        lambda tmp, m: HfEmbedForCausalLM(HfEmbedConfig(**CONFIG, n_embd_wte=R)).import_scale_matrices_npz(
            str(_object_npz(tmp / "s.npz", m))
        ),
    ],
    ids=["import_wte_npy-method", "import_wte_npy-config", "init_wte_npy", "import_scale_matrices_npz"],
)
def test_a_crafted_object_array_is_refused_and_never_unpickled(load, tmp_path):
    marker = tmp_path / "code-ran"
    with pytest.raises(ValueError, match=r"(?s)pickled or object data.*refused|refused.*pickled or object data"):
        load(tmp_path, marker)
    assert not marker.exists()


def _checkpoint(marker: Path) -> dict:
    state = {"transformer.wte.weight": torch.zeros(V, D)}
    return {"model": state, "model_args": {"n_head": 2}, "optimizer": CodeOnLoad(marker)}


@pytest.mark.parametrize(
    "write",
    [
        lambda path, checkpoint: torch.save(checkpoint, path),
        lambda path, checkpoint: torch.save(checkpoint, path, _use_new_zipfile_serialization=False),
        lambda path, checkpoint: path.write_bytes(pickle.dumps(checkpoint)),
    ],
    ids=["torch-zip", "torch-legacy", "raw-pickle"],
)
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # the raw pickle uses protocol 4; torch notes it
def test_a_crafted_checkpoint_pickle_is_refused_and_never_run(write, tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "ckpt.pt"
    write(path, _checkpoint(marker))
    assert not marker.exists()  # writing did not run it
    with pytest.raises(ValueError) as raised:
        hf_embed.convert_nanogpt(path)
    assert "ckpt.pt" in str(raised.value)
    assert not marker.exists()


def test_a_model_folder_holds_no_pickle(tmp_path):
    """Weights are written as safetensors only: no .bin / .pt / .pkl file that a reader would have to unpickle."""
    HfEmbedForCausalLM(HfEmbedConfig(**CONFIG, n_embd_wte=R)).save_pretrained(tmp_path)
    suffixes = {p.suffix for p in tmp_path.iterdir()}
    assert ".safetensors" in suffixes
    assert not suffixes & {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}


class _Blocks(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        ids = torch.arange(8) % V
        return {"input_ids": ids, "labels": ids}


@pytest.mark.parametrize("name", ["optimizer.pt", "rng_state.pth"])
def test_resuming_from_a_checkpoint_with_a_crafted_pickle_refuses_it(name, tmp_path):
    """`--resume_from_checkpoint` reads the Trainer's .pt files with weights_only=True: a payload never runs."""
    from transformers import TrainingArguments

    from hf_embed.checkpointing import AtomicCheckpointTrainer

    def trainer(max_steps: int) -> AtomicCheckpointTrainer:
        args = TrainingArguments(
            output_dir=str(tmp_path / "out"), max_steps=max_steps, save_steps=2, per_device_train_batch_size=4,
            report_to="none", use_cpu=True, disable_tqdm=True, logging_strategy="no",
        )  # fmt: skip
        model = HfEmbedForCausalLM(HfEmbedConfig(**CONFIG))
        return AtomicCheckpointTrainer(model=model, args=args, train_dataset=_Blocks())

    trainer(2).train()
    checkpoint = tmp_path / "out" / "checkpoint-2"
    marker = tmp_path / "code-ran"
    torch.save({"state": CodeOnLoad(marker)}, checkpoint / name)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        trainer(4).train(resume_from_checkpoint=str(checkpoint))
    assert not marker.exists()
