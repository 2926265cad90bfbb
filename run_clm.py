#!/usr/bin/env python
"""Train (or evaluate) an hf_embed causal language model with the Hugging Face `Trainer`.

It follows the conventions of transformers' example `run_clm.py`:

    python run_clm.py                                   # the main job: a small model on CPython's help topics
    python run_clm.py --train_file corpus.txt --n_embd_wte 64 --use_rotary_embeddings --rope_variant soap \\
        --export_wte_npy wte.npy --export_wte_each_eval --output_dir output/soap
    python run_clm.py args.json                         # the same arguments from one JSON file
    torchrun --nproc_per_node 2 run_clm.py ...          # several processes (DDP over gloo on a CPU-only machine)
    accelerate launch --multi_gpu --num_processes 2 run_clm.py ...   # the same through accelerate

Every `HfEmbedConfig` field is a flag of its own (generated from the config class); `--block_size` is both
the model's context and the length of the training blocks; `--use_cache` is the KV cache during training
(off unless given) and in the saved `config.json` (on unless given). With neither `--do_train` nor
`--do_eval`, the script does both. Without `--model_name_or_path`, a new model is made: small by default
(`NEW_MODEL_DEFAULTS`), with a byte-level BPE tokenizer trained on the training text. Without any data
argument the text is CPython's `pydoc_data.topics`, and the table `wte.npy` is exported at every evaluation.
"""

import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from transformers import HfArgumentParser, IntervalStrategy, Trainer, TrainingArguments, set_seed

import hf_embed  # noqa: F401 - registers the Auto classes
from hf_embed.arguments import add_negative_flags, config_arguments_dataclass
from hf_embed.callbacks import EmbeddingExportCallback
from hf_embed.checkpointing import AtomicCheckpointTrainer
from hf_embed.clm import (
    build_config,
    build_model,
    evaluate_lengths,
    generation_length,
    last_complete_checkpoint,
    load_text_splits,
    load_tokenizer,
    make_datasets,
    summary_text,
)
from hf_embed.data import unigram_perplexity
from hf_embed.model_card import training_rows, write_model_card
from hf_embed.plot import maybe_plot_embeddings

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    """Which model, config and tokenizer to start from."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "A saved hf_embed folder (or Hub id) to continue from; default: a new model."}
    )
    config_name: str | None = field(
        default=None, metadata={"help": "A config folder or file to start a new model from."}
    )
    tokenizer_name: str | None = field(
        default=None,
        metadata={"help": "A tokenizer folder or Hub id; default: the model's, else a BPE trained on the train text."},
    )
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated NAME=VALUE config settings, applied last, e.g. n_embd_wte=64,rope_length=16."
        },
    )
    license: str = field(default="apache-2.0", metadata={"help": "License in the model card's metadata."})


@dataclass
class DataTrainingArguments:
    """What to train and evaluate on."""

    dataset_name: str | None = field(default=None, metadata={"help": "A dataset on the Hub (needs `datasets`)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "The dataset's configuration name."})
    train_file: str | None = field(default=None, metadata={"help": "A .txt, .csv, .json or .jsonl training file."})
    validation_file: str | None = field(default=None, metadata={"help": "A .txt, .csv, .json or .jsonl file."})
    text_column: str = field(default="text", metadata={"help": "Column of csv/json rows (else the first one)."})
    validation_split_percentage: float = field(
        default=5, metadata={"help": "Percent of the training records held out when there is no validation file."}
    )
    block_size: int | None = field(
        default=None,
        metadata={
            "help": "Context of a new model (config block_size) and length of the training blocks; default 128 "
            "for a new model, the model's block_size for a loaded one."
        },
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep at most this many training blocks."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep at most this many validation blocks."})
    eval_lengths: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated context lengths (e.g. 128,256,512) at which to report validation perplexity "
            "after training; lengths past block_size are not applicable with learned absolute positions."
        },
    )

    def __post_init__(self):
        if self.dataset_name and (self.train_file or self.validation_file):
            raise ValueError("dataset_name and train_file/validation_file are alternatives: give one of them")
        if self.validation_file and not (self.train_file or self.dataset_name):
            raise ValueError(f"validation_file={self.validation_file!r} needs a train_file (or dataset_name)")
        if self.block_size is not None and self.block_size < 2:
            raise ValueError(f"block_size={self.block_size} is not allowed: expected an integer >= 2")
        self.eval_length_list = _parse_lengths(self.eval_lengths)


def _parse_lengths(text: str | None) -> list[int]:
    try:
        lengths = [int(x) for x in text.split(",") if x.strip()] if text else []
    except ValueError:
        lengths = [0]
    if any(n < 2 for n in lengths):
        raise ValueError(f"eval_lengths={text!r} is not allowed: expected comma-separated integers >= 2")
    return lengths


@dataclass
class ClmTrainingArguments(TrainingArguments):
    """`TrainingArguments` with defaults for small models trained from scratch on CPU, and `use_cache` resolved."""

    output_dir: str | None = field(default="output/hf_embed-clm", metadata={"help": "Where everything is written."})
    eval_strategy: IntervalStrategy | str | None = field(
        default=None, metadata={"help": "no, steps or epoch; default: steps when training and evaluating, else no."}
    )
    eval_steps: float | None = field(default=100, metadata={"help": "Evaluate every this many steps."})
    logging_steps: float = field(default=25, metadata={"help": "Log every this many steps."})
    save_steps: float = field(default=500, metadata={"help": "Save a checkpoint every this many steps."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Keep at most this many checkpoints."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak AdamW learning rate."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule."})
    warmup_steps: float = field(default=0.05, metadata={"help": "Warm-up steps (a float < 1 is a fraction)."})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay."})
    per_device_train_batch_size: int = field(default=16, metadata={"help": "Training batch size per process."})
    per_device_eval_batch_size: int = field(default=16, metadata={"help": "Evaluation batch size per process."})
    num_train_epochs: float = field(default=12.0, metadata={"help": "Epochs (unless max_steps > 0)."})
    ddp_find_unused_parameters: bool | None = field(
        default=False, metadata={"help": "DDP's search for unused parameters (hf_embed models use them all)."}
    )
    use_cache: bool | None = field(
        default=None,
        metadata={
            "nargs": "?",
            "const": True,
            "help": "KV cache during training (default off) and in the saved config.json (default on).",
        },
    )

    def __post_init__(self):
        if isinstance(self.resume_from_checkpoint, str) and self.resume_from_checkpoint.lower() in ("true", "last"):
            self.resume_from_checkpoint = _last_checkpoint(self.output_dir)
        if not self.do_train and not self.do_eval:
            self.do_train = self.do_eval = True
        if self.eval_strategy is None:
            self.eval_strategy = "steps" if self.do_train and self.do_eval else "no"
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not _has_accelerator() and not self.use_cpu:
            self.use_cpu = True  # several processes on a machine without accelerators: DDP over gloo on the CPU
        self.saved_use_cache = True if self.use_cache is None else bool(self.use_cache)
        self.use_cache = bool(self.use_cache)
        super().__post_init__()


def _has_accelerator() -> bool:
    if hasattr(torch, "accelerator"):
        return torch.accelerator.is_available()
    return torch.cuda.is_available()


def _last_checkpoint(output_dir: str) -> str:
    last = last_complete_checkpoint(output_dir)
    if last is None:
        raise ValueError(
            f"resume_from_checkpoint=last: {output_dir!r} holds no complete checkpoint-* folder to resume from"
        )
    return last


CONFIG_FLAG_COLLISIONS = {"block_size", "use_cache"}  # config fields the script's own arguments stand for
HfEmbedArguments = config_arguments_dataclass(exclude=CONFIG_FLAG_COLLISIONS)


def make_parser() -> HfArgumentParser:
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, ClmTrainingArguments, HfEmbedArguments))
    add_negative_flags(parser, HfEmbedArguments)
    return parser


def parse_args(argv: list[str] | None = None) -> tuple:
    """(model_args, data_args, training_args, embed_args) from the command line or one `.json` file."""
    argv = sys.argv[1:] if argv is None else argv
    parser = make_parser()
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(json_file=str(Path(argv[0]).resolve()))
    return parser.parse_args_into_dataclasses(args=argv)


def setup_logging(training_args: TrainingArguments) -> None:
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
        force=True,
    )
    level = training_args.get_process_log_level()
    if training_args.should_log and training_args.log_level == "passive":
        level = logging.INFO  # the example's choice: the main process tells what it does
    logging.getLogger().setLevel(level)
    transformers.utils.logging.set_verbosity(level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()
    logger.warning(
        f"Process rank {training_args.process_index} of {training_args.world_size}, device {training_args.device}"
    )
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true" and "MASTER_ADDR" in os.environ:
        if "WORLD_SIZE" not in os.environ:  # accelerate's --cpu launcher spreads processes only through MPI
            logger.warning(
                "`accelerate launch --cpu --num_processes N` started one process (accelerate starts several CPU "
                "processes only through MPI, --mpirun_hostfile). For N processes over gloo on a CPU-only machine "
                "run `accelerate launch --multi_gpu --num_processes N run_clm.py ...` or `torchrun`."
            )


def main(argv: list[str] | None = None) -> dict:
    """Run the job; return its metrics. The main process writes the card and prints a summary."""
    model_args, data_args, training_args, embed_args = parse_args(argv)
    setup_logging(training_args)
    set_seed(training_args.seed)

    splits = load_text_splits(data_args, training_args)
    tokenizer = load_tokenizer(model_args, embed_args, training_args, splits)
    config = build_config(model_args, data_args, training_args, embed_args, tokenizer, splits)
    model = build_model(config, model_args)
    datasets = make_datasets(tokenizer, splits, config, data_args, training_args)

    export_callback = EmbeddingExportCallback()
    trainer = AtomicCheckpointTrainer(  # a Trainer whose checkpoint-N folders appear whole or not at all
        model=model,
        args=training_args,
        train_dataset=datasets.train if training_args.do_train else None,
        eval_dataset=datasets.validation if training_args.do_eval else None,
        processing_class=tokenizer,
        data_collator=transformers.default_data_collator,
        callbacks=[export_callback],
    )
    metrics: dict = {}
    if training_args.do_train:
        metrics.update(train(trainer, training_args, datasets))
    if training_args.do_eval:
        metrics.update(evaluate(trainer, datasets, config, data_args))
    if trainer.is_world_process_zero():
        if training_args.do_train:
            write_card(trainer, model_args, training_args, splits, datasets, metrics)
            maybe_plot_embeddings(training_args.output_dir, trainer.model.config.export_wte_npy or "wte.npy")
        new_tokens = generation_length(config)
        print(summary_text(Path(training_args.output_dir), metrics, export_callback.written, new_tokens))
    return metrics


def train(trainer: Trainer, training_args: ClmTrainingArguments, datasets) -> dict:
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.model.config.use_cache = training_args.saved_use_cache  # Trainer set it to the training value
    trainer.save_model()  # weights, config with auto_map, modeling code, tokenizer
    metrics = dict(result.metrics, train_samples=len(datasets.train))
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()
    return metrics


def evaluate(trainer: Trainer, datasets, config, data_args: DataTrainingArguments) -> dict:
    metrics = trainer.evaluate()
    metrics["eval_samples"] = len(datasets.validation)
    metrics["perplexity"] = math.exp(min(metrics["eval_loss"], 700.0))
    metrics["unigram_perplexity"] = unigram_perplexity(
        datasets.train_ids, datasets.validation.blocks, config.vocab_size
    )
    metrics.update(evaluate_lengths(trainer, datasets.validation_ids, data_args.eval_length_list, config))
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    return metrics


def write_card(trainer: Trainer, model_args, training_args, splits, datasets, metrics: dict) -> None:
    """The model card, written last (after Trainer's own README.md when pushing), then pushed if asked."""
    output_dir = Path(training_args.output_dir)
    if training_args.push_to_hub:
        trainer.push_to_hub()  # Trainer's push writes its own README.md draft first: ours replaces it below
    repo_id = trainer.hub_model_id if training_args.push_to_hub else str(output_dir)
    card = write_model_card(
        output_dir,
        trainer.model,
        metrics=metrics,
        dataset=splits.source,
        license=model_args.license,
        repo_id=repo_id,
        training=training_rows(training_args, datasets.block_size, trainer.state.global_step, splits.source),
        max_new_tokens=generation_length(trainer.model.config),
    )
    if training_args.push_to_hub:
        card.push_to_hub(repo_id, token=training_args.hub_token)


def shut_down_processes() -> None:
    """Let every process finish its writes, then close the process group: a rank that exits while gloo threads
    still run aborts the interpreter ("terminate called without an active exception")."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
    shut_down_processes()
