"""Compress a trained token table into the factorized form by truncated SVD.

For a token table `wte` (V, d) = U S Vᵀ, the rank-R factorization keeps the R largest singular values:

    new wte      = U_R S_R   (V, R)
    scale_up (W) = V_R       (d, R)     up:   e ↦ e Wᵀ   (SPEC §2), so wte[i] ↦ (U_R S_R V_Rᵀ)[i]
                                        down: h ↦ h W    (the exact transpose)

so the up-projection reproduces the best rank-R approximation of the table (Eckart–Young) and, with a tied head,
the logits `h W (U_R S_R)ᵀ = h (U_R S_R V_Rᵀ)ᵀ` use that same approximation. At R = d nothing is lost.

An untied head (`wte_weight_tying=False`) is factorized on its own: head (V, d) = P Σ Qᵀ gives `lm_head` = P_R Σ_R
and an untied `scale_down` W_down = Q_R, since `h W_down (P_R Σ_R)ᵀ = h (P_R Σ_R Q_Rᵀ)ᵀ`. One shared adapter
cannot serve two different tables, so such a model gets `n_embd_wte_scale_tying=False`.

    python -m hf_embed.factorize SRC_DIR DST_DIR --n_embd_wte R
"""

import argparse
import copy
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.utils import logging

from .embeddings import embedding_parameter_count

logger = logging.get_logger(__name__)

# Config fields that read files or freeze imported tables when a model is built from its config: the old (V, d)
# files do not fit the factorized model, and its weights come from the SVD, so they are cleared.
_IMPORT_FIELDS = {
    "import_wte_npy": None,
    "import_wte_freeze": False,
    "import_scale_matrices_npz": None,
    "import_scale_matrices_freeze": False,
}


def truncated_svd(table: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Split `table` (V, d) into `(U_R S_R, V_R)`, shapes (V, R) and (d, R), so `table ≈ U_R S_R V_Rᵀ`.

    Computed in float64, returned in the table's dtype; the product is the best rank-R approximation. The third
    value is its relative error ‖table − U_R S_R V_Rᵀ‖_F / ‖table‖_F, from the discarded singular values.
    """
    u, s, vh = torch.linalg.svd(table.detach().to(torch.float64), full_matrices=False)
    left = u[:, :rank] * s[:rank]  # (V, R)
    right = vh[:rank].T  # (d, R)
    total = s.square().sum()
    error = float((s[rank:].square().sum() / total).sqrt()) if total > 0 else 0.0
    return left.to(table.dtype).contiguous(), right.to(table.dtype).contiguous(), error


def check_factorizable(model: PreTrainedModel, n_embd_wte: int) -> None:
    """Raise `ValueError` unless `model` is an unfactorized causal LM and `1 <= n_embd_wte <= min(V, d)`."""
    config = model.config
    if not hasattr(model, "lm_head") or not hasattr(model.base_model, "wte"):
        raise ValueError(f"model must be an HfEmbedForCausalLM (a decoder with lm_head), got {type(model).__name__}")
    if getattr(config, "n_embd_wte", None) is not None:
        raise ValueError(
            f"model is already factorized (n_embd_wte={config.n_embd_wte}); factorize_embeddings needs an "
            "unfactorized model (n_embd_wte=None). Start again from the unfactorized model."
        )
    limit = min(config.vocab_size, config.n_embd)
    if isinstance(n_embd_wte, bool) or not isinstance(n_embd_wte, int) or not 1 <= n_embd_wte <= limit:
        raise ValueError(
            f"n_embd_wte={n_embd_wte!r} is not allowed: expected an integer in [1, {limit}] "
            f"(min(vocab_size={config.vocab_size}, n_embd={config.n_embd}))"
        )


def factorized_config(config, n_embd_wte: int, scale_tying: bool):
    """A copy of `config` with the factorized token table and without import files (their shapes are (V, d))."""
    new = copy.deepcopy(config)
    new.n_embd_wte = n_embd_wte
    new.n_embd_wte_scale_tying = scale_tying
    for name, unused in _IMPORT_FIELDS.items():
        if getattr(new, name) != unused:
            logger.info(
                "factorize_embeddings: %s=%r is cleared (the table comes from the SVD)", name, getattr(new, name)
            )
            setattr(new, name, unused)
    if new.init_variant == "numpy_import":
        new.init_variant = "gaussian"
    try:
        new.check_arguments()
    except ValueError as err:  # an init variant that needs a wider table (onehot, hypercube) no longer fits
        if "init_variant" not in str(err):
            raise
        logger.info(
            "factorize_embeddings: init_variant=%r does not fit n_embd_wte=%d; set to 'gaussian' (%s)",
            new.init_variant,
            n_embd_wte,
            err,
        )
        new.init_variant = "gaussian"
        new.check_arguments()
    return new


def factorize_embeddings(model: PreTrainedModel, n_embd_wte: int) -> PreTrainedModel:
    """Return a new model whose token table is the rank-`n_embd_wte` truncated SVD of `model`'s.

    Tied head: new `wte` = U_R S_R (V, R), tied adapter `scale_up.weight` = V_R (d, R), so the down projection is
    the exact transpose of the up projection. Untied head: the head is factorized the same way into `lm_head` and
    an untied `scale_down`. All other weights are copied. At `n_embd_wte = d` the logits equal the original's up
    to float rounding. `model` is left unchanged.

    Raises `ValueError` for a model that is already factorized or `n_embd_wte` outside [1, min(V, d)].
    """
    return _factorize(model, n_embd_wte)[0]


def _factorize(model: PreTrainedModel, n_embd_wte: int) -> tuple[PreTrainedModel, dict[str, float]]:
    """`factorize_embeddings`, plus the relative error of each factorized table ({'wte': …[, 'lm_head': …]})."""
    check_factorizable(model, n_embd_wte)
    prefix = f"{model.base_model_prefix}." if model.base_model is not model else ""
    table = model.base_model.wte.weight
    tied_head = bool(model.config.wte_weight_tying)

    new_table, up, error = truncated_svd(table, n_embd_wte)
    errors = {"wte": error}
    replaced = {f"{prefix}wte.weight": new_table, f"{prefix}scale_up.weight": up, "lm_head.weight": new_table}
    if not tied_head:  # one adapter cannot serve two tables: the head gets its own SVD and down projection
        head, down, errors["lm_head"] = truncated_svd(model.lm_head.weight, n_embd_wte)
        replaced.update({"lm_head.weight": head, f"{prefix}scale_down.weight": down})
    logger.info("factorize_embeddings: rank %d, relative Frobenius error %s", n_embd_wte, errors)

    config = factorized_config(model.config, n_embd_wte, scale_tying=tied_head)
    new_model = type(model)(config).to(device=table.device, dtype=table.dtype)
    new_model.load_state_dict(_new_state_dict(model.state_dict(), new_model.state_dict(), replaced), strict=True)
    if getattr(model, "generation_config", None) is not None:
        new_model.generation_config = copy.deepcopy(model.generation_config)
    new_model.train(model.training)
    return new_model, errors


def _new_state_dict(old: dict, target: dict, replaced: dict) -> dict:
    """Every key of `target`, from `replaced` or else copied from `old`; no old key may be left behind."""
    missing = [key for key in target if key not in replaced and key not in old]
    left_behind = [key for key in old if key not in target and key not in replaced]
    if missing or left_behind:
        raise ValueError(
            f"cannot map the weights onto the factorized model: missing {missing}, not carried over {left_behind}"
        )
    return {key: replaced[key] if key in replaced else old[key] for key in target}


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m hf_embed.factorize",
        description="Factorize the token table of a saved hf_embed model by truncated SVD (rank n_embd_wte).",
    )
    parser.add_argument("src_dir", metavar="SRC_DIR", help="folder of an unfactorized model (save_pretrained)")
    parser.add_argument("dst_dir", metavar="DST_DIR", help="folder to write the factorized model to")
    parser.add_argument("--n_embd_wte", type=int, required=True, help="rank R of the new table, 1 <= R <= min(V, d)")
    parser.add_argument("--overwrite", action="store_true", help="write into DST_DIR even if it holds a model")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        src, dst = _check_dirs(Path(args.src_dir), Path(args.dst_dir), args.overwrite)
        model = AutoModelForCausalLM.from_pretrained(src)
        factorized, errors = _factorize(model, args.n_embd_wte)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    factorized.save_pretrained(dst)
    _copy_tokenizer(src, dst)
    print(
        f"wrote {dst}: n_embd_wte={args.n_embd_wte}, embedding parameters {embedding_parameter_count(model.config)} "
        f"-> {embedding_parameter_count(factorized.config)}, relative Frobenius error "
        + ", ".join(f"{name} {value:.4g}" for name, value in errors.items())
    )
    return 0


def _check_dirs(src: Path, dst: Path, overwrite: bool) -> tuple[Path, Path]:
    if not (src / "config.json").is_file():
        raise ValueError(f"SRC_DIR={str(src)!r} is not a saved model folder (no config.json)")
    if src.resolve() == dst.resolve():
        raise ValueError(f"DST_DIR={str(dst)!r} is SRC_DIR: write the factorized model to another folder")
    if (dst / "config.json").exists() and not overwrite:
        raise ValueError(f"DST_DIR={str(dst)!r} already holds a model; pass --overwrite to replace it")
    return src, dst


def _copy_tokenizer(src: Path, dst: Path) -> None:
    try:
        tokenizer = AutoTokenizer.from_pretrained(src)
    except (OSError, ValueError):
        logger.info("no tokenizer in %s; the factorized model is saved without one", src)
        return
    tokenizer.save_pretrained(dst)


if __name__ == "__main__":
    sys.exit(main())
