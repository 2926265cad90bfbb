"""EmbeddingExportCallback (SPEC §5) and atomic writes, driven by hand: no Trainer, a tiny real model."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import TrainerControl, TrainerState, TrainingArguments

from hf_embed import EmbeddingExportCallback, HfEmbedConfig, HfEmbedForCausalLM
from hf_embed.atomic import atomic_write_text
from hf_embed.callbacks import snapshot_path

V, D, R = 61, 16, 8
ATOMIC_PY = Path(__file__).resolve().parents[1] / "hf_embed" / "atomic.py"


def _model(**overrides) -> HfEmbedForCausalLM:
    torch.manual_seed(0)
    kwargs = dict(vocab_size=V, n_embd=D, n_layer=1, n_head=2, block_size=16)
    kwargs.update(overrides)
    return HfEmbedForCausalLM(HfEmbedConfig(**kwargs))


def _state(step: int, main: bool = True) -> TrainerState:
    state = TrainerState()
    state.global_step = step
    state.is_world_process_zero = main
    return state


@pytest.fixture
def args(tmp_path) -> TrainingArguments:
    return TrainingArguments(output_dir=str(tmp_path / "out"), report_to="none")


def _evaluate(callback, args, model, step, main=True):
    callback.on_evaluate(args, _state(step, main), TrainerControl(), model=model, metrics={})


def _train_end(callback, args, model, step, main=True):
    callback.on_train_end(args, _state(step, main), TrainerControl(), model=model)


def _wte(model) -> np.ndarray:
    return model.transformer.wte.weight.detach().numpy()


def test_snapshot_names_carry_the_zero_padded_step():
    assert snapshot_path("wte.npy", 120) == Path("wte-step000120.npy")
    assert snapshot_path("a/b/scales.npz", 7) == Path("a/b/scales-step000007.npz")
    assert snapshot_path("table", 1234567) == Path("table-step1234567")


def test_each_eval_snapshots_never_overwrite_and_the_end_writes_the_plain_paths(args):
    model = _model(
        n_embd_wte=R,
        export_wte_npy="wte.npy",
        export_wte_each_eval=True,
        export_scale_matrices_npz="sub/scales.npz",
        export_scale_matrices_each_eval=True,
    )
    callback = EmbeddingExportCallback()
    out = Path(args.output_dir)

    _evaluate(callback, args, model, 120)
    first = _wte(model).copy()
    with torch.no_grad():
        model.transformer.wte.weight.add_(1.0)
        model.transformer.scale_up.weight.mul_(2.0)
    _evaluate(callback, args, model, 240)
    _train_end(callback, args, model, 240)

    np.testing.assert_array_equal(np.load(out / "wte-step000120.npy"), first)
    np.testing.assert_array_equal(np.load(out / "wte-step000240.npy"), _wte(model))
    np.testing.assert_array_equal(np.load(out / "wte.npy"), _wte(model))
    assert np.load(out / "wte-step000120.npy").shape == (V, R)
    up = model.transformer.scale_up.weight.detach().numpy().T  # (r, d) in the file, SPEC §2
    late, early = (np.load(out / "sub" / f"scales-step{s:06d}.npz") for s in (240, 120))
    np.testing.assert_array_equal(late["scale_up"], up)
    np.testing.assert_array_equal(early["scale_up"] * 2.0, up)
    assert sorted(p.name for p in out.iterdir()) == ["sub", "wte-step000120.npy", "wte-step000240.npy", "wte.npy"]
    assert sorted(p.name for p in (out / "sub").iterdir()) == [
        "scales-step000120.npz",
        "scales-step000240.npz",
        "scales.npz",
    ]
    assert [p.name for p in callback.written] == [
        "wte-step000120.npy",
        "scales-step000120.npz",
        "wte-step000240.npy",
        "scales-step000240.npz",
        "wte.npy",
        "scales.npz",
    ]


def test_a_second_evaluation_at_the_same_step_keeps_the_snapshot(args):
    model = _model(export_wte_npy="wte.npy", export_wte_each_eval=True)
    callback = EmbeddingExportCallback()
    _evaluate(callback, args, model, 5)
    snapshot = Path(args.output_dir) / "wte-step000005.npy"
    before = snapshot.stat().st_mtime_ns
    _evaluate(callback, args, model, 5)  # e.g. the final trainer.evaluate() at the last step
    assert snapshot.stat().st_mtime_ns == before
    np.testing.assert_array_equal(np.load(snapshot), _wte(model))


def test_only_the_main_process_writes(args):
    model = _model(export_wte_npy="wte.npy", export_wte_each_eval=True)
    callback = EmbeddingExportCallback()
    _evaluate(callback, args, model, 3, main=False)
    _train_end(callback, args, model, 3, main=False)
    assert not Path(args.output_dir).exists() or not any(Path(args.output_dir).iterdir())
    assert callback.written == []


def test_paths_given_to_the_callback_win_and_absolute_paths_stay(args, tmp_path):
    model = _model(export_wte_npy="from_config.npy", export_wte_each_eval=True)
    target = tmp_path / "elsewhere" / "table.npy"
    callback = EmbeddingExportCallback(export_wte_npy=str(target), export_wte_each_eval=False)
    _evaluate(callback, args, model, 10)
    assert not target.parent.exists()  # each-eval switched off by the callback's own argument
    _train_end(callback, args, model, 10)
    np.testing.assert_array_equal(np.load(target), _wte(model))
    assert not (Path(args.output_dir) / "from_config.npy").exists()


def test_without_each_eval_only_the_end_writes(args):
    model = _model(export_wte_npy="wte.npy")
    callback = EmbeddingExportCallback()
    _evaluate(callback, args, model, 4)
    assert not (Path(args.output_dir) / "wte-step000004.npy").exists()
    _train_end(callback, args, model, 4)
    assert sorted(p.name for p in Path(args.output_dir).iterdir()) == ["wte.npy"]


def test_an_impossible_export_is_refused_before_training(args):
    callback = EmbeddingExportCallback(export_scale_matrices_npz="scales.npz")
    with pytest.raises(ValueError, match="n_embd_wte"):
        callback.on_train_begin(args, _state(0), TrainerControl(), model=_model())


def test_a_write_interrupted_mid_file_keeps_the_previous_file(args, monkeypatch):
    model = _model(export_wte_npy="wte.npy")
    callback = EmbeddingExportCallback()
    _train_end(callback, args, model, 1)
    out = Path(args.output_dir)
    previous = (out / "wte.npy").read_bytes()

    real_save = np.save

    def save_half_then_fail(file, array, *a, **k):
        real_save(file, array, *a, **k)
        file.truncate(len(previous) // 2)  # half a file is on disk ...
        raise OSError("disk full")  # ... when the writer dies

    monkeypatch.setattr(np, "save", save_half_then_fail)
    with torch.no_grad():
        model.transformer.wte.weight.add_(1.0)
    with pytest.raises(OSError, match="disk full"):
        _train_end(callback, args, model, 2)
    assert (out / "wte.npy").read_bytes() == previous
    assert sorted(p.name for p in out.iterdir()) == ["wte.npy"]  # no partial or temporary file left


def test_a_killed_text_write_leaves_the_previous_file_whole(tmp_path):
    """SIGKILL in the middle of a write: the target still holds the old content in full."""
    target = tmp_path / "README.md"
    atomic_write_text(target, "old card\n")
    script = textwrap.dedent(
        f"""
        import importlib.util, os, signal
        spec = importlib.util.spec_from_file_location("atomic", {str(ATOMIC_PY)!r})  # no torch import: fast
        atomic = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(atomic)
        with atomic.atomic_path({str(target)!r}) as tmp:
            with open(tmp, "w") as f:
                f.write("new card, first half")
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert result.returncode == -signal.SIGKILL
    assert target.read_text() == "old card\n"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "README.md"]
    assert all(name.startswith(".README.md.tmp-") for name in leftovers)  # hidden, never the target's name
    atomic_write_text(target, "new card\n")
    assert target.read_text() == "new card\n"
    assert os.stat(target).st_size == len("new card\n")


def test_exports_are_refused_when_fsdp_shards_the_table(args, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    model = _model(export_wte_npy="wte.npy")
    with pytest.raises(ValueError, match="export_wte_npy='wte.npy' is not allowed with FSDP"):
        EmbeddingExportCallback().on_train_begin(args, _state(0), TrainerControl(), model=model)
