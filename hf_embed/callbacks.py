"""`EmbeddingExportCallback`: writes the token table and scale matrices during and after `Trainer` training.

Behaviour (SPEC §5):
- paths come from the model's config (`export_wte_npy`, `export_scale_matrices_npz`, and the `*_each_eval`
  switches) unless given to the callback; a relative path resolves against `TrainingArguments.output_dir`;
- at every evaluation, an each-eval export writes a snapshot named after the global step, `wte.npy` ->
  `wte-step000120.npy`, so snapshots never overwrite one another;
- at the end of training the plain path is written;
- every write is atomic: the model's export methods write a temporary file and rename it (`numpy_io`);
- only the main process writes;
- under FSDP or DeepSpeed ZeRO-3 (parameters sharded across processes) an export is refused at the start of
  training: the main process alone cannot gather the table.
"""

import os
from dataclasses import dataclass
from pathlib import Path

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.utils import logging

logger = logging.get_logger(__name__)

__all__ = ["EmbeddingExportCallback", "snapshot_path"]


@dataclass(frozen=True)
class _Export:
    """One kind of export: the config fields that drive it and the model method that writes it."""

    name: str  # the config field holding the path
    each_eval: str  # the config field switching per-evaluation snapshots
    method: str  # the model method, called with the target path; it writes atomically


_EXPORTS = (
    _Export("export_wte_npy", "export_wte_each_eval", "export_wte_npy"),
    _Export("export_scale_matrices_npz", "export_scale_matrices_each_eval", "export_scale_matrices_npz"),
)


def snapshot_path(path: str | Path, step: int) -> Path:
    """`wte.npy` at step 120 -> `wte-step000120.npy` (the step zero-padded to six digits)."""
    path = Path(path)
    return path.with_name(f"{path.stem}-step{step:06d}{path.suffix}")


class EmbeddingExportCallback(TrainerCallback):
    """Export `wte` (`.npy`) and the scale matrices (`.npz`) at evaluations and at the end of training.

    Args:
        export_wte_npy: path of the token table export; default `model.config.export_wte_npy`.
        export_scale_matrices_npz: path of the scale matrices export; default from the config.
        export_wte_each_eval: also write a step-numbered snapshot at every evaluation; default from the config.
        export_scale_matrices_each_eval: likewise for the scale matrices.

    `written` lists every file this callback wrote, in order.
    """

    def __init__(
        self,
        export_wte_npy: str | None = None,
        export_scale_matrices_npz: str | None = None,
        export_wte_each_eval: bool | None = None,
        export_scale_matrices_each_eval: bool | None = None,
    ):
        self._given = {
            "export_wte_npy": export_wte_npy,
            "export_scale_matrices_npz": export_scale_matrices_npz,
            "export_wte_each_eval": export_wte_each_eval,
            "export_scale_matrices_each_eval": export_scale_matrices_each_eval,
        }
        self.written: list[Path] = []
        self._snapshots_done: set[tuple[str, int]] = set()

    # ------------------------------------------------------------------ events
    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        """Refuse an impossible export before the first step rather than after hours of training."""
        model = _unwrap(kwargs.get("model"))
        sharding = _sharding(args)
        for export in _EXPORTS:
            if self._setting(export.name, model) and not hasattr(model, export.method):
                raise ValueError(f"{export.name} is set but the model has no {export.method}() method")
            if self._setting(export.name, model) and sharding:
                raise ValueError(
                    f"{export.name}={self._setting(export.name, model)!r} is not allowed with {sharding}: the main "
                    "process would read a shard of the table. Train without the export and write it from the saved "
                    "folder: HfEmbedForCausalLM.from_pretrained(output_dir).export_wte_npy(path)"
                )
        if self._setting("export_scale_matrices_npz", model) and getattr(model.config, "n_embd_wte", None) is None:
            raise ValueError(
                "export_scale_matrices_npz needs a factorized token table (n_embd_wte set); the model has none"
            )

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if not state.is_world_process_zero:
            return
        model = _unwrap(kwargs.get("model"))
        for export in _EXPORTS:
            path = self._setting(export.name, model)
            if not path or not self._setting(export.each_eval, model):
                continue
            if (export.name, state.global_step) in self._snapshots_done:
                continue  # same step, same weights: the snapshot is already there
            target = snapshot_path(self._resolve(path, args), state.global_step)
            self._write(model, export, target)
            self._snapshots_done.add((export.name, state.global_step))

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if not state.is_world_process_zero:
            return
        model = _unwrap(kwargs.get("model"))
        for export in _EXPORTS:
            path = self._setting(export.name, model)
            if path:
                self._write(model, export, self._resolve(path, args))

    # ----------------------------------------------------------------- helpers
    def _setting(self, name: str, model) -> object:
        given = self._given[name]
        if given is not None:
            return given
        return getattr(getattr(model, "config", None), name, None)

    @staticmethod
    def _resolve(path: str | Path, args: TrainingArguments) -> Path:
        path = Path(path).expanduser()
        return path if path.is_absolute() else Path(args.output_dir) / path

    def _write(self, model, export: _Export, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        getattr(model, export.method)(str(target))
        if target not in self.written:
            self.written.append(target)
        logger.info(f"Wrote {export.name} to {target}")


def _sharding(args: TrainingArguments) -> str | None:
    """The name of a parameter-sharding scheme in use (FSDP, DeepSpeed ZeRO-3), else None."""
    if getattr(args, "fsdp", None) or os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        return "FSDP"
    from transformers.integrations import is_deepspeed_zero3_enabled

    return "DeepSpeed ZeRO-3" if is_deepspeed_zero3_enabled() else None


def _unwrap(model):
    """The model under a DistributedDataParallel-style wrapper (`.module`), else the model itself."""
    while hasattr(model, "module"):
        model = model.module
    return model
