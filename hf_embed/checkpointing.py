"""`AtomicCheckpointTrainer`: a `Trainer` whose checkpoints appear whole or not at all.

`Trainer` writes `checkpoint-N` in place and deletes old checkpoints with `rmtree`, so a process killed meanwhile
leaves a `checkpoint-N` with a truncated or missing file, which neither loads nor resumes. Here a checkpoint is
written into a hidden staging folder beside the checkpoints, then renamed to `checkpoint-N` once every process has
finished writing; an old checkpoint is renamed to a hidden name before it is deleted. A rename within one folder is
atomic, so every `checkpoint-N` is complete. Kept out of the modeling import graph (only `run_clm.py` needs it).
"""

import os
import shutil
from pathlib import Path

from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, sort_checkpoints

__all__ = ["AtomicCheckpointTrainer", "STAGING_FOLDER"]

STAGING_FOLDER = ".staging-checkpoints"  # hidden: `checkpoint-*` globs and get_last_checkpoint never see it
_DELETING = ".deleting-"


class AtomicCheckpointTrainer(Trainer):
    """`Trainer` with atomic checkpoints: `checkpoint-N` appears only when complete and disappears in one step.

    With `push_to_hub` (the upload reads the checkpoint folder in the background) it saves as `Trainer` does.
    """

    _staging = False

    def _get_output_dir(self, trial) -> str:
        run_dir = super()._get_output_dir(trial)
        return os.path.join(run_dir, STAGING_FOLDER) if self._staging else run_dir

    def _save_checkpoint(self, model, trial) -> None:
        if self.args.push_to_hub:
            return super()._save_checkpoint(model, trial)
        run_dir = Path(super()._get_output_dir(trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staged = run_dir / STAGING_FOLDER / name
        if self.args.should_save:
            shutil.rmtree(staged, ignore_errors=True)  # left by a run killed while saving this step
        self.accelerator.wait_for_everyone()
        self._staging = True
        try:
            super()._save_checkpoint(model, trial)  # writes <run_dir>/.staging-checkpoints/checkpoint-N
        finally:
            self._staging = False
        self.accelerator.wait_for_everyone()  # every process has written its files (RNG state per process)
        if self.args.should_save:
            self._publish(staged, run_dir)
        self.accelerator.wait_for_everyone()

    def _publish(self, staged: Path, run_dir: Path) -> None:
        """Rename the staged checkpoint into place, then rotate old checkpoints out."""
        staging_root = str(staged.parent)
        best = self.state.best_model_checkpoint
        if best and best.startswith(staging_root):  # Trainer recorded the staging path: record the final one
            self.state.best_model_checkpoint = str(run_dir) + best[len(staging_root) :]
            self.state.save_to_json(str(staged / "trainer_state.json"))
        final = run_dir / staged.name
        if final.exists():  # saved again at the same step
            _remove(final)
        os.replace(staged, final)
        _fsync_folder(run_dir)
        for leftover in run_dir.glob(f"{_DELETING}{PREFIX_CHECKPOINT_DIR}-*"):  # from a run killed while deleting
            shutil.rmtree(leftover, ignore_errors=True)
        _rotate(run_dir, self.args.save_total_limit, self.state.best_model_checkpoint)
        try:
            os.rmdir(staging_root)
        except OSError:
            pass  # not empty (another trial's checkpoint): leave it


def _remove(folder: Path) -> None:
    """Rename out of sight (atomic), then delete: a kill during the deletion leaves no half `checkpoint-N`."""
    doomed = folder.with_name(f"{_DELETING}{folder.name}")
    shutil.rmtree(doomed, ignore_errors=True)
    os.replace(folder, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def _rotate(run_dir: Path, limit: int | None, best: str | None) -> None:
    """Trainer's rotation (keep the newest `limit`; the newest and the best always), deleting with `_remove`."""
    if not limit or limit <= 0:
        return
    checkpoints = sort_checkpoints(str(run_dir))  # oldest first, by step
    protected = {checkpoints[-1]} | ({str(Path(best))} if best else set())
    remaining = len(checkpoints)
    for checkpoint in checkpoints:
        if remaining <= max(limit, len(protected)):
            break
        if checkpoint not in protected:
            _remove(Path(checkpoint))
            remaining -= 1


def _fsync_folder(path: Path) -> None:
    """Make a rename in `path` durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
