"""The model card (`README.md`) of a trained hf_embed folder, rendered from `model_cards/` with `ModelCard`."""

from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from transformers.utils import logging

from .atomic import atomic_write_text
from .configuration_hf_embed import HfEmbedConfig
from .embeddings import embedding_parameter_count

logger = logging.get_logger(__name__)

TEMPLATE = Path(__file__).resolve().parent.parent / "model_cards" / "hf_embed_model_card.md"
TAGS = ["hf_embed", "custom_code", "text-generation"]
# Always in the embedding table; the other embedding arguments appear when they differ from the default.
CORE_ROWS = (
    "vocab_size",
    "n_embd",
    "n_embd_wte",
    "wte_weight_tying",
    "use_abs_pos_embeddings",
    "block_size",
    "use_rotary_embeddings",
    "use_fire_embeddings",
    "init_variant",
)
FIRST_EMBEDDING_FIELD = "n_embd_wte"  # fields from here on (in class order) describe the embedding stack

__all__ = ["TEMPLATE", "build_model_card", "embedding_rows", "parameter_rows", "training_rows", "write_model_card"]


def embedding_rows(config: HfEmbedConfig) -> list[tuple[str, str]]:
    """(argument, value) for the core embedding arguments and every other one that is not at its default."""
    fields = HfEmbedConfig.argument_fields()
    start = next(i for i, f in enumerate(fields) if f.name == FIRST_EMBEDDING_FIELD)
    embedding = {f.name: f.default for f in fields[start:]}
    rows = []
    for field in fields:
        value = getattr(config, field.name)
        if field.name in CORE_ROWS or (field.name in embedding and value != embedding[field.name]):
            rows.append((field.name, "—" if value is None else f"`{value}`"))
    return rows


def parameter_rows(model) -> list[tuple[str, str]]:
    """Total, trainable, token embedding stack, learned positions, and the rest (tied tensors count once)."""
    params = dict(model.named_parameters())  # named_parameters() lists a tied tensor once
    total = sum(p.numel() for p in params.values())
    trainable = sum(p.numel() for p in params.values() if p.requires_grad)
    embedding = embedding_parameter_count(model.config)
    positions = sum(p.numel() for name, p in params.items() if name.endswith("wpe.weight"))
    return [
        ("total", f"{total:,}"),
        ("trainable", f"{trainable:,}"),
        ("token embedding stack (table, adapters, untied head)", f"{embedding:,}"),
        ("learned absolute positions", f"{positions:,}"),
        ("everything else (blocks, final LayerNorm, FIRE)", f"{total - embedding - positions:,}"),
    ]


def _eval_rows(metrics: dict) -> list[tuple[str, str]]:
    names = {"eval_loss": "validation loss", "perplexity": "validation perplexity"}
    names["unigram_perplexity"] = "unigram baseline perplexity"
    rows = [(label, f"{metrics[key]:.4f}") for key, label in names.items() if metrics.get(key) is not None]
    for key, value in metrics.items():
        if key.startswith("eval_len") and key.endswith("_perplexity"):
            shown = value if isinstance(value, str) else f"{value:.4f}"
            rows.append((f"validation perplexity at {key[8:-11]} tokens of context", shown))
    return rows


def build_model_card(
    model,
    metrics: dict,
    dataset: str,
    license: str,
    repo_id: str,
    training: dict[str, object],
    prompt: str = "The for statement",
    max_new_tokens: int = 40,
) -> ModelCard:
    """Render the template: YAML metadata, usage, embedding stack, parameters, evaluation, training."""
    if not TEMPLATE.is_file():
        raise FileNotFoundError(f"model card template {TEMPLATE} is missing: run from a checkout of hf_embed")
    model_name = Path(repo_id).name
    eval_results = None
    if metrics.get("perplexity") is not None:
        eval_results = [
            EvalResult(
                task_type="text-generation",
                dataset_type=dataset,
                dataset_name=dataset,
                dataset_split="validation",
                metric_type="perplexity",
                metric_value=round(metrics["perplexity"], 4),
            )
        ]
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=TAGS,
        datasets=[dataset],
        license=license,
        model_name=model_name,
        eval_results=eval_results,
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        model_name=model_name,
        repo_id=repo_id,
        prompt=prompt,
        max_new_tokens=max_new_tokens,
        dataset_description=f"`{dataset}`",
        embedding_rows=embedding_rows(model.config),
        parameter_rows=parameter_rows(model),
        eval_rows=_eval_rows(metrics),
        training_rows=[(name, f"`{value}`") for name, value in training.items()],
    )


def write_model_card(output_dir: str | Path, model, **kwargs) -> ModelCard:
    """Render the card and write `output_dir/README.md` atomically; return the card (for `push_to_hub`)."""
    card = build_model_card(model, **kwargs)
    path = Path(output_dir) / "README.md"
    atomic_write_text(path, str(card))
    logger.info(f"Wrote the model card to {path}")
    return card


def training_rows(training_args, block_size: int, global_step: int, dataset: str) -> dict[str, object]:
    """The training settings worth reporting in the card."""
    batch = training_args.per_device_train_batch_size * training_args.world_size
    batch *= training_args.gradient_accumulation_steps
    return {
        "data": dataset,
        "steps": global_step,
        "tokens per step": batch * block_size,
        "block size (context)": block_size,
        "batch size (all processes)": batch,
        "learning rate": training_args.learning_rate,
        "schedule": getattr(training_args.lr_scheduler_type, "value", training_args.lr_scheduler_type),
        "weight decay": training_args.weight_decay,
        "seed": training_args.seed,
        "processes": training_args.world_size,
    }
