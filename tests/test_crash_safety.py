"""Crash safety of `run_clm.py`: a training process killed with SIGKILL leaves every snapshot and checkpoint
loadable (no truncated file), and `--resume_from_checkpoint` on the last checkpoint finishes the run.

The trainer alone (`AtomicCheckpointTrainer`) is tested in this process with a write that fails halfway. Then
`run_clm.py` is killed three times: once at an arbitrary moment after a few evaluations (what a user sees), and
twice exactly in the middle of a write, so that the outcome does not depend on timing: half of a checkpoint's
`model.safetensors`, and half of an embedding snapshot, are written when the process kills itself.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from hf_embed import HfEmbedConfig, HfEmbedForCausalLM
from hf_embed.checkpointing import STAGING_FOLDER, AtomicCheckpointTrainer
from hf_embed.data import default_corpus_text

ROOT = Path(__file__).resolve().parent.parent
V, D, R = 320, 32, 8
MAX_STEPS = 40
FLAGS = [
    "--n_layer", "1", "--n_embd", str(D), "--n_head", "2", "--block_size", "32", "--vocab_size", str(V),
    "--n_embd_wte", str(R), "--n_embd_wte_scale_tying", "false",
    "--export_wte_npy", "wte.npy", "--export_wte_each_eval",
    "--export_scale_matrices_npz", "scales.npz", "--export_scale_matrices_each_eval",
    "--max_steps", str(MAX_STEPS), "--eval_steps", "2", "--save_steps", "2", "--logging_steps", "1",
    "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4", "--max_eval_samples", "4",
    "--seed", "0", "--report_to", "none", "--dataloader_pin_memory", "false",
]  # fmt: skip
CHECKPOINT_FILES = ("config.json", "model.safetensors", "trainer_state.json", "optimizer.pt", "scheduler.pt")

# Run run_clm.py in this interpreter after arranging for the process to SIGKILL itself halfway through one write.
KILLER = """
import os, runpy, signal, sys
KIND, WHICH = sys.argv[1], int(sys.argv[2])
seen = []

def die_halfway(path, data):
    with open(path, "wb") as handle:
        handle.write(data[: len(data) // 2])
        handle.flush()
        os.fsync(handle.fileno())
    os.kill(os.getpid(), signal.SIGKILL)

if KIND == "checkpoint":
    import safetensors.torch as st
    real_save_file = st.save_file
    def save_file(tensors, filename, metadata=None):
        if "checkpoint-" in str(filename):
            seen.append(filename)
            if len(seen) == WHICH:
                die_halfway(filename, st.save(tensors, metadata=metadata))
        return real_save_file(tensors, filename, metadata=metadata)
    st.save_file = save_file  # before transformers imports it
else:
    import io
    import numpy as np
    real_save = np.save
    def save(file, arr, *args, **kwargs):
        seen.append(file)
        if len(seen) == WHICH and hasattr(file, "write"):
            buffer = io.BytesIO()
            real_save(buffer, arr, *args, **kwargs)
            data = buffer.getvalue()
            file.write(data[: len(data) // 2])
            file.flush()
            os.fsync(file.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(file, arr, *args, **kwargs)
    np.save = save
sys.argv = ["run_clm.py", *sys.argv[3:]]
runpy.run_path(os.path.join(os.environ["HF_EMBED_ROOT"], "run_clm.py"), run_name="__main__")
"""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    if not (ROOT / "run_clm.py").is_file():
        pytest.fail("run_clm.py does not exist")
    path = tmp_path_factory.mktemp("data") / "corpus.txt"
    path.write_text(default_corpus_text()[:30_000], encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def run_clm():
    sys.path.insert(0, str(ROOT))
    try:
        import run_clm
    finally:
        sys.path.remove(str(ROOT))
    return run_clm


def _env(tmp_path: Path) -> dict[str, str]:
    return dict(
        os.environ,
        HF_HOME=str(tmp_path / "hf_home"),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        HF_EMBED_ROOT=str(ROOT),
        PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    )


def _args(corpus: Path, output: Path) -> list[str]:
    return ["--train_file", str(corpus), "--output_dir", str(output), *FLAGS]


def _snapshots(output: Path, suffix: str) -> list[Path]:
    return sorted(output.glob(f"*-step*{suffix}"))


def check_loadable(output: Path) -> list[str]:
    """Every snapshot and checkpoint in `output` opens and holds what it should; returns the checkpoint names."""
    for path in _snapshots(output, ".npy"):
        table = np.load(path, allow_pickle=False)
        assert table.shape == (V, R) and np.isfinite(table).all(), path.name
    for path in _snapshots(output, ".npz"):
        with np.load(path, allow_pickle=False) as archive:
            assert {k: archive[k].shape for k in archive.files} == {"scale_up": (R, D), "scale_down": (R, D)}, path
    checkpoints = sorted(output.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    for folder in checkpoints:
        missing = [name for name in CHECKPOINT_FILES if not (folder / name).is_file()]
        assert not missing, f"{folder.name} lacks {missing}"
        HfEmbedForCausalLM.from_pretrained(folder)
        state = json.loads((folder / "trainer_state.json").read_text())
        assert state["global_step"] == int(folder.name.split("-")[1])
        for name in ("optimizer.pt", "scheduler.pt"):
            torch.load(folder / name, weights_only=True)
    return [folder.name for folder in checkpoints]


def _resume_and_finish(run_clm, corpus: Path, output: Path, last: str) -> None:
    run_clm.main([*_args(corpus, output), "--resume_from_checkpoint", str(output / last)])
    state = json.loads((output / "trainer_state.json").read_text())
    assert state["global_step"] == MAX_STEPS
    HfEmbedForCausalLM.from_pretrained(output)
    np.load(output / "wte.npy", allow_pickle=False)  # the end-of-training export
    check_loadable(output)


def test_a_run_killed_after_a_few_evaluations_is_loadable_and_resumes(corpus, run_clm, tmp_path):
    output = tmp_path / "out"
    command = [sys.executable, str(ROOT / "run_clm.py"), *_args(corpus, output)]
    with open(tmp_path / "log.txt", "w") as log:
        process = subprocess.Popen(command, cwd=tmp_path, env=_env(tmp_path), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while len(_snapshots(output, ".npy")) < 3 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        finished = process.poll() is not None
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert not finished, "the run ended before it could be killed:\n" + (tmp_path / "log.txt").read_text()[-3000:]
    assert process.returncode == -signal.SIGKILL
    checkpoints = check_loadable(output)
    assert checkpoints, "no checkpoint was written before the kill"
    _resume_and_finish(run_clm, corpus, output, checkpoints[-1])


def _killed_halfway(kind: str, which: int, corpus: Path, tmp_path: Path) -> Path:
    output = tmp_path / "out"
    command = [sys.executable, "-c", KILLER, kind, str(which), *_args(corpus, output)]
    result = subprocess.run(command, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert result.returncode == -signal.SIGKILL, result.stdout[-2000:] + result.stderr[-3000:]
    return output


def test_a_kill_in_the_middle_of_writing_a_checkpoint_leaves_only_complete_checkpoints(corpus, run_clm, tmp_path):
    output = _killed_halfway("checkpoint", 3, corpus, tmp_path)  # the third checkpoint's model.safetensors
    checkpoints = check_loadable(output)
    assert checkpoints, "no complete checkpoint survived"
    _resume_and_finish(run_clm, corpus, output, checkpoints[-1])


def test_a_kill_in_the_middle_of_writing_a_snapshot_leaves_no_truncated_snapshot(corpus, tmp_path):
    output = _killed_halfway("snapshot", 3, corpus, tmp_path)  # the third numpy write: a wte snapshot
    snapshots = _snapshots(output, ".npy")
    assert snapshots, "the first snapshot should be complete"
    check_loadable(output)
    visible = [p.name for p in output.iterdir() if not p.name.startswith(".")]
    assert all(not name.endswith(".tmp") for name in visible)


# ------------------------------------------------------------------------------- the trainer, in this process
class _Blocks(torch.utils.data.Dataset):
    def __init__(self):
        self.blocks = torch.randint(0, 50, (16, 8), generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.blocks)

    def __getitem__(self, i):
        return {"input_ids": self.blocks[i], "labels": self.blocks[i]}


class _Crash(BaseException):
    """Stands for SIGKILL: nothing catches it, nothing after it runs."""


def _train(output: Path, limit: int | None, fail_at: int | None = None, monkeypatch=None) -> None:
    from transformers import TrainingArguments

    if fail_at is not None:
        import transformers.modeling_utils as modeling_utils

        real, calls = modeling_utils.safe_save_file, []

        def half_then_crash(tensors, filename, metadata=None):
            calls.append(filename)
            if len(calls) == fail_at:
                real(tensors, filename, metadata=metadata)
                Path(filename).write_bytes(Path(filename).read_bytes()[:100])  # truncated, as a kill would leave it
                raise _Crash
            return real(tensors, filename, metadata=metadata)

        monkeypatch.setattr(modeling_utils, "safe_save_file", half_then_crash)
    torch.manual_seed(0)
    model = HfEmbedForCausalLM(HfEmbedConfig(vocab_size=50, n_embd=16, n_layer=1, n_head=2, block_size=8))
    args = TrainingArguments(
        output_dir=str(output), max_steps=8, save_steps=2, save_total_limit=limit, per_device_train_batch_size=4,
        report_to="none", use_cpu=True, disable_tqdm=True, logging_strategy="no",
    )  # fmt: skip
    AtomicCheckpointTrainer(model=model, args=args, train_dataset=_Blocks()).train()


def test_the_trainer_publishes_a_checkpoint_only_when_it_is_complete(tmp_path, monkeypatch):
    output = tmp_path / "out"
    with pytest.raises(_Crash):
        _train(output, limit=None, fail_at=3, monkeypatch=monkeypatch)  # the third checkpoint fails halfway
    assert sorted(p.name for p in output.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    for folder in output.glob("checkpoint-*"):
        HfEmbedForCausalLM.from_pretrained(folder)
        torch.load(folder / "optimizer.pt", weights_only=True)
        assert json.loads((folder / "trainer_state.json").read_text())["global_step"] == int(folder.name[11:])


def test_the_trainer_rotates_and_leaves_nothing_hidden_behind(tmp_path):
    output = tmp_path / "out"
    _train(output, limit=2)
    assert sorted(p.name for p in output.iterdir() if p.name.startswith(("checkpoint-", "."))) == [
        "checkpoint-6",
        "checkpoint-8",
    ]
    assert not (output / STAGING_FOLDER).exists()
    for folder in output.glob("checkpoint-*"):
        HfEmbedForCausalLM.from_pretrained(folder)
