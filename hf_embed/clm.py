"""The steps of `run_clm.py`: text, tokenizer, config, model, blocks, evaluation at several lengths, summary.

Kept out of the modeling import graph: a `trust_remote_code` user never needs this module.
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase, TrainingArguments
from transformers.utils import logging

from .arguments import apply_config_values, given_config_values, parse_config_overrides
from .configuration_hf_embed import HfEmbedConfig
from .data import (
    DEFAULT_CORPUS,
    BlockDataset,
    TextSplits,
    default_corpus_text,
    group_blocks,
    load_hub_splits,
    paragraphs,
    read_records,
    split_records,
    token_stream,
    tokenizer_from_json,
    train_bpe_tokenizer,
)
from .modeling_hf_embed import HfEmbedForCausalLM

logger = logging.get_logger(__name__)

# A new model (no --model_name_or_path / --config_name) is small unless these flags are given.
NEW_MODEL_DEFAULTS: dict[str, Any] = {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 128}
# The main job (no data argument) also exports the token table at every evaluation.
MAIN_JOB_DEFAULTS: dict[str, Any] = {"export_wte_npy": "wte.npy", "export_wte_each_eval": True}
NOT_APPLICABLE = "n/a"  # metric value of a context length the model cannot evaluate
# Size of the BPE tokenizer trained on the training text unless --vocab_size is given.
DEFAULT_TOKENIZER_VOCAB = 2048

__all__ = [
    "DEFAULT_TOKENIZER_VOCAB",
    "MAIN_JOB_DEFAULTS",
    "NEW_MODEL_DEFAULTS",
    "Datasets",
    "build_config",
    "build_model",
    "evaluate_lengths",
    "generation_length",
    "last_complete_checkpoint",
    "load_text_splits",
    "load_tokenizer",
    "make_datasets",
    "summary_text",
]


def last_complete_checkpoint(output_dir: str | Path) -> str | None:
    """The newest `checkpoint-N` in `output_dir` that a run finished writing, else None.

    `Trainer` writes `trainer_state.json` last; a run killed while saving leaves a folder without it (or with a
    truncated one), which resuming must skip rather than pick as "the last checkpoint".
    """
    folders = [p for p in Path(output_dir).glob("checkpoint-*") if p.is_dir() and p.name[11:].isdigit()]
    for folder in sorted(folders, key=lambda p: int(p.name[11:]), reverse=True):
        try:
            json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            logger.warning(f"Skipping {folder}: its trainer_state.json is missing or incomplete (interrupted save)")
            continue
        return str(folder)
    return None


def load_text_splits(data_args, training_args: TrainingArguments) -> TextSplits:
    """Training and validation records from a Hub dataset, files, or the embedded default corpus."""
    percentage = data_args.validation_split_percentage if training_args.do_eval else 0
    if data_args.dataset_name:
        return load_hub_splits(data_args.dataset_name, data_args.dataset_config_name, percentage, data_args.text_column)
    if data_args.train_file:
        records, documents = read_records(data_args.train_file, data_args.text_column)
        source = Path(data_args.train_file).name
    else:
        records, documents, source = paragraphs(default_corpus_text()), False, DEFAULT_CORPUS
    if data_args.validation_file:
        validation, _ = read_records(data_args.validation_file, data_args.text_column)
        return TextSplits(records, validation, documents, source)
    train, validation = split_records(records, percentage)
    return TextSplits(train, validation, documents, source)


def load_tokenizer(model_args, embed_args, training_args: TrainingArguments, splits: TextSplits):
    """The given tokenizer, the model's, the checkpoint's when resuming, or a byte-level BPE trained on the text.

    A trained tokenizer is made once, by the main process, and sent to the others (no file is written here: the
    Trainer saves it with the model), so all processes share one vocabulary without a shared file system.
    """
    source = model_args.tokenizer_name or model_args.model_name_or_path or _checkpoint_tokenizer(training_args)
    if source:
        return AutoTokenizer.from_pretrained(source)
    vocab_size = embed_args.vocab_size or DEFAULT_TOKENIZER_VOCAB
    max_length = NEW_MODEL_DEFAULTS["block_size"]
    if training_args.process_index == 0:
        logger.info(f"Training a byte-level BPE tokenizer of {vocab_size} tokens on {len(splits.train)} records")
        tokenizer = train_bpe_tokenizer(splits.train, vocab_size, model_max_length=max_length)
    if training_args.world_size == 1:
        return tokenizer
    from accelerate.utils import broadcast_object_list

    payload = [tokenizer.backend_tokenizer.to_str() if training_args.process_index == 0 else None]
    broadcast_object_list(payload, from_process=0)
    return tokenizer if training_args.process_index == 0 else tokenizer_from_json(payload[0], max_length)


def _checkpoint_tokenizer(training_args: TrainingArguments) -> str | None:
    """When resuming, the checkpoint's own tokenizer (the vocabulary the saved weights were trained with)."""
    checkpoint = training_args.resume_from_checkpoint if training_args.do_train else None
    if checkpoint and (Path(checkpoint) / "tokenizer_config.json").is_file():
        return checkpoint
    return None


def build_config(model_args, data_args, training_args, embed_args, tokenizer, splits: TextSplits) -> HfEmbedConfig:
    """The model's config: base (loaded, or new and small), then the given flags, then `--config_overrides`."""
    new_model = not (model_args.model_name_or_path or model_args.config_name)
    if new_model:
        config = HfEmbedConfig(**NEW_MODEL_DEFAULTS)
        values = {
            "vocab_size": len(tokenizer),
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        }
        if splits.source == DEFAULT_CORPUS:
            values.update(MAIN_JOB_DEFAULTS)
    else:
        config = _load_config(model_args.model_name_or_path or model_args.config_name)
        values = {}
    values.update(given_config_values(embed_args))
    values["use_cache"] = training_args.saved_use_cache
    if data_args.block_size is not None and (new_model or not config.use_abs_pos_embeddings):
        values["block_size"] = data_args.block_size  # else the learned positions fix the context
    values.update(parse_config_overrides(model_args.config_overrides))
    apply_config_values(config, values)
    _check_fits(config, tokenizer, data_args.block_size)
    return config


def _load_config(path: str) -> HfEmbedConfig:
    config = AutoConfig.from_pretrained(path)
    if not isinstance(config, HfEmbedConfig):
        raise ValueError(f"{path!r} holds a {type(config).__name__}; run_clm.py trains hf_embed models only")
    return config


def _check_fits(config: HfEmbedConfig, tokenizer: PreTrainedTokenizerBase, block_size: int | None) -> None:
    if config.vocab_size < len(tokenizer):
        raise ValueError(
            f"vocab_size={config.vocab_size} is too small for the tokenizer's {len(tokenizer)} tokens: "
            f"expected vocab_size >= {len(tokenizer)}"
        )
    if block_size is not None and config.use_abs_pos_embeddings and block_size > config.block_size:
        raise ValueError(
            f"block_size={block_size} is not allowed for this model: its learned absolute positions stop at "
            f"{config.block_size}; expected block_size <= {config.block_size}"
        )


def build_model(config: HfEmbedConfig, model_args) -> HfEmbedForCausalLM:
    """Continue from `model_name_or_path`, or build a new model (which reads the config's import files)."""
    if model_args.model_name_or_path:
        return HfEmbedForCausalLM.from_pretrained(model_args.model_name_or_path, config=config)
    model = HfEmbedForCausalLM(config)
    logger.info(f"New model: {sum(p.numel() for p in model.parameters()):,} parameters")
    return model


@dataclass
class Datasets:
    """The token streams and their blocks."""

    train: BlockDataset
    validation: BlockDataset
    train_ids: list[int]
    validation_ids: list[int]
    block_size: int


def make_datasets(tokenizer, splits: TextSplits, config: HfEmbedConfig, data_args, training_args) -> Datasets:
    """Tokenize both splits and cut them into blocks of `block_size` (default: the model's context)."""
    block_size = data_args.block_size or config.block_size
    tokenizer.model_max_length = max(block_size, config.block_size)
    train_ids = token_stream(tokenizer, splits.train, splits.documents)
    validation_ids = token_stream(tokenizer, splits.validation, splits.documents)
    train = BlockDataset(group_blocks(train_ids, block_size, data_args.max_train_samples))
    validation = BlockDataset(group_blocks(validation_ids, block_size, data_args.max_eval_samples))
    for name, wanted, dataset, ids in (
        ("training", training_args.do_train, train, train_ids),
        ("validation", training_args.do_eval, validation, validation_ids),
    ):
        if wanted and len(dataset) == 0:
            raise ValueError(
                f"the {name} text of {splits.source!r} has {len(ids)} tokens, fewer than one block of "
                f"block_size={block_size}: give more text, a smaller block_size, or a validation_file"
            )
    logger.info(f"{len(train)} training and {len(validation)} validation blocks of {block_size} tokens")
    return Datasets(train, validation, train_ids, validation_ids, block_size)


def evaluate_lengths(trainer, validation_ids: list[int], lengths: list[int], config: HfEmbedConfig) -> dict:
    """Validation perplexity at each context length; "n/a" past learned absolute positions (or the text)."""
    metrics: dict[str, float | str] = {}
    for length in lengths:
        key = f"eval_len{length}_perplexity"
        blocks = group_blocks(validation_ids, length)
        if config.use_abs_pos_embeddings and length > config.block_size:
            logger.info(f"{key}: n/a (learned absolute positions stop at block_size={config.block_size})")
            metrics[key] = NOT_APPLICABLE
        elif len(blocks) == 0:
            logger.info(f"{key}: n/a (the validation text has fewer than {length} tokens)")
            metrics[key] = NOT_APPLICABLE
        else:
            loss = trainer.evaluate(BlockDataset(blocks), metric_key_prefix=f"eval_len{length}")[
                f"eval_len{length}_loss"
            ]
            metrics[key] = math.exp(min(loss, 700.0))
    return metrics


def generation_length(config: HfEmbedConfig, wanted: int = 40) -> int:
    """New tokens for the usage examples: `wanted`, within the learned positions when the model has them."""
    return min(wanted, config.block_size // 2) if config.use_abs_pos_embeddings else wanted


def summary_text(output_dir: Path, metrics: dict, exports: list[Path], max_new_tokens: int = 40) -> str:
    """What the run achieved, where everything is, and three lines that load the model and generate."""
    lines = []
    if "perplexity" in metrics:
        lines.append(
            f"Validation perplexity {metrics['perplexity']:.2f} (unigram baseline with the same tokenizer: "
            f"{metrics['unigram_perplexity']:.2f})"
        )
    for key, value in metrics.items():
        if key.startswith("eval_len") and key.endswith("_perplexity"):
            shown = value if isinstance(value, str) else f"{value:.2f}"
            lines.append(f"  at {key[8:-11]} tokens of context: {shown}")
    lines.append(f"Written to {output_dir}/:")
    lines.extend(f"  {kind:<12}{', '.join(names)}" for kind, names in _inventory(output_dir, exports).items() if names)
    if not (output_dir / "config.json").is_file():  # an evaluation-only run saves no model
        return "\n".join(lines)
    folder = str(output_dir)
    lines += [
        "Load it and generate:",
        "    from transformers import AutoModelForCausalLM, AutoTokenizer",
        f"    model = AutoModelForCausalLM.from_pretrained({folder!r}, trust_remote_code=True); "
        f"tok = AutoTokenizer.from_pretrained({folder!r}, trust_remote_code=True)",
        f'    print(tok.decode(model.generate(**tok("The for statement", return_tensors="pt"), '
        f"max_new_tokens={max_new_tokens})[0]))",
    ]
    return "\n".join(lines)


def _inventory(output_dir: Path, exports: list[Path]) -> dict[str, list[str]]:
    names = sorted(p.name for p in output_dir.iterdir()) if output_dir.is_dir() else []
    export_names = [str(p.relative_to(output_dir)) if p.is_relative_to(output_dir) else str(p) for p in exports]
    return {
        "model": [
            n for n in names if n.endswith((".safetensors", ".py")) or n in ("config.json", "generation_config.json")
        ],
        "tokenizer": [n for n in names if n.startswith(("tokenizer", "special_tokens", "vocab", "merges"))],
        "exports": export_names,
        "model card": [n for n in names if n == "README.md"],
        "metrics": [n for n in names if n.endswith("results.json") or n == "trainer_state.json"],
        "checkpoints": [n for n in names if n.startswith("checkpoint-")],
    }
