"""Import nanoGPT / ReaLLM-Forge `ckpt.pt` checkpoints of the GPT-2-style architecture as `HfEmbedForCausalLM`.

A checkpoint is a dict with `model`, the state dict (keys may carry torch.compile's `_orig_mod.` or DDP's `module.`
prefix), and `model_args`, the `GPTConfig` arguments. Both projects use our names and the `nn.Linear` layout, so
the weights map one to one, except:

- ReaLLM-Forge's split `attn.c_attn_q/k/v` are fused into `attn.c_attn` (q, k, v order, as nanoGPT);
- tied copies (`lm_head` when `wte_weight_tying`, `scale_down` when `n_embd_wte_scale_tying`) are checked equal
  and kept once; nanoGPT's causal-mask buffers `attn.bias` and rotary buffers are recomputed, not copied;
- FIRE (`attn.fire_pos_enc`) becomes `attn.fire`, or `transformer.fire` when shared.

nanoGPT's MLP uses the exact GELU, so the config gets `activation_function="gelu"`. Any other key is an error that
lists it: weights are never dropped silently. The file is read with `torch.load(weights_only=True)`, so a pickle
that would run code is refused.
"""

import dataclasses
import os
import pickle
import re
from collections.abc import Mapping
from typing import Any

import torch
from transformers.utils import logging

from .configuration_hf_embed import HfEmbedConfig
from .modeling_hf_embed import HfEmbedForCausalLM

logger = logging.get_logger(__name__)

_PREFIXES = ("_orig_mod.", "module.")

# model_args with the same name and meaning in HfEmbedConfig, copied into the config
CARRIED_ARGS = (
    "vocab_size", "n_embd", "n_layer", "n_head", "block_size", "dropout", "bias",
    "n_embd_wte", "n_embd_wte_scale_tying", "wte_weight_tying",
    "use_abs_pos_embeddings", "use_rotary_embeddings", "rope_variant", "rope_length", "rope_theta",
    "sym_rot_num_angles", "use_fire_embeddings", "shared_fire_embeddings", "fire_mlp_width",
    "fire_num_hidden_layers", "fire_init_c", "fire_init_L", "fire_log_bias", "fire_outermost_sigma",
)  # fmt: skip

# model_args about how a run started or what it wrote (initialisation, import/export files), not the weights:
# not carried, so that building the model never reads the run's files; reported when set
RUN_ARGS = (
    "import_wte_npy", "import_wte_freeze", "export_wte_npy", "export_wte_each_eval",
    "import_scale_matrices_npz", "import_scale_matrices_freeze", "export_scale_matrices_npz",
    "export_scale_matrices_each_eval", "init_variant", "init_scale", "init_wte_npy", "init_radius",
    "gaussian_min_norm", "gaussian_max_norm", "embedding_mean_init", "embedding_std_init",
)  # fmt: skip

# ReaLLM-Forge model_args that change the forward pass: name -> the values that keep it GPT-2-style
ARCHITECTURE_ARGS: dict[str, Any] = {
    "use_rmsnorm": (False,),
    "norm_variant_attn": ("layernorm",),
    "norm_variant_output": ("layernorm",),
    "norm_variant_wte": (None,),
    "norm_variant_abs": (None,),
    "norm_variant_lm_head": (None,),
    "activation_variant": ("gelu",),
    "mlp_variant": ("mlp",),
    "mlp_expansion_factor": (4,),
    "mlp_size": lambda args: (None, 4 * args.get("n_embd", 0)),
    "mlp_down_projs": (1,),
    "mlp_up_bias": lambda args: (None, args.get("bias")),
    "mlp_down_bias": lambda args: (None, args.get("bias")),
    "attention_variant": ("causal",),
    "attention_list": ([], ()),
    "n_kv_group": lambda args: (None, args.get("n_head")),
    "n_qk_head_dim": (None,),
    "n_v_head_dim": (None,),
    "n_cproj": (None,),
    "softmax_variant_attn": ("softmax",),
    "softmax_variant_output": ("softmax",),
    "use_pre_ln": (True,),
    "use_post_ln": (False,),
    "use_peri_ln": (False,),
    "use_parallel_mlp": (False,),
    "use_moe": (False,),
    "use_qk_norm": (False,),
    "use_qk_norm_scale": (False,),
    "use_v_norm": (False,),
    "use_flash_lobo": (False,),
    "gate": (False,),
    "window_size": (None,),
    "attn_logit_softcapping": (None,),
    "final_logit_softcapping": (None,),
    "use_embedding_scale": (False,),
    "use_ln_f_input_mixer": (False,),
    "multicontext": (False,),
    "multidataset_wte": (False,),
    "numerical_multicontext": (False,),
    "quantize_wte": (False,),
    "quantize_wpe": (False,),
    "linear_variant_attn": ("linear",),
    "linear_variant_mlp": ("linear",),
    "attention_residual_variant": ("standard",),
    "n_lpe": (0,),
    "use_lsv": (False,),
    "apply_vector_at_layer_idx": (None,),
    "mlp_x_offset": (0.0,),
    "mlp_y_offset": (0.0,),
    "mlp_cproj_scale": (1.0,),
    "mlp_post_act_l2_norm": (False,),
    "l2_norm_mlp_up": (False,),
    "l2_norm_mlp_down": (False,),
    "qkv_bias": (None, False, True),  # False with bias=True: zero biases; True with bias=False is refused below
}


def convert_nanogpt(
    path_or_checkpoint: str | os.PathLike | Mapping, config_overrides: Mapping[str, Any] | None = None
) -> HfEmbedForCausalLM:
    """A nanoGPT / ReaLLM-Forge checkpoint -> an `HfEmbedForCausalLM` with the same weights and logits.

    `path_or_checkpoint`: a `ckpt.pt` path, the loaded checkpoint dict (`model`, `model_args`), or a bare state
    dict. `config_overrides`: HfEmbedConfig fields set on top of what the checkpoint gives (needed for `n_head`
    when there are no `model_args`). Raises `ValueError` naming the file, key or argument on anything that does
    not map: a pickle that needs code execution, an unsupported architecture argument, an unknown weight.
    """
    checkpoint, source = _read_checkpoint(path_or_checkpoint)
    state, model_args = _split_checkpoint(checkpoint, source)
    state = _strip_prefixes(state, source)
    config = nanogpt_config(model_args, state, config_overrides, source)
    state = _map_weights(state, config, source)
    model = HfEmbedForCausalLM(config)
    _load_weights(model, state, source)
    return model.eval()


def _read_checkpoint(path_or_checkpoint) -> tuple[Mapping, str]:
    if isinstance(path_or_checkpoint, Mapping):
        return path_or_checkpoint, "the checkpoint"
    path = os.fspath(path_or_checkpoint)
    if not os.path.isfile(path):
        raise ValueError(f"convert_nanogpt: checkpoint {path!r} does not exist or is not a file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True), repr(path)
    except pickle.UnpicklingError as err:
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"convert_nanogpt: refused to load {path!r}: it holds Python objects that only a full unpickling, which "
            f"can execute code, would rebuild ({reason}). Only tensors, numbers, strings and containers are read "
            "(torch.load(weights_only=True)). If you trust the file, load it yourself and pass the dict: "
            "convert_nanogpt({'model': ckpt['model'], 'model_args': dict(ckpt['model_args'])})"
        ) from err
    except (RuntimeError, OSError, EOFError) as err:
        raise ValueError(f"convert_nanogpt: cannot read {path!r} as a torch checkpoint: {err}") from err


def _split_checkpoint(checkpoint: Mapping, source: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, model_args) of a checkpoint dict or a bare state dict."""
    if isinstance(checkpoint.get("model"), Mapping):
        state, model_args = checkpoint["model"], checkpoint.get("model_args") or {}
    elif checkpoint and all(isinstance(value, torch.Tensor) for value in checkpoint.values()):
        state, model_args = checkpoint, {}
    else:
        raise ValueError(
            f"convert_nanogpt: {source} is neither a nanoGPT checkpoint (a dict with 'model' and 'model_args') nor "
            f"a state dict of tensors; found keys {sorted(map(str, checkpoint))[:10]}"
        )
    if dataclasses.is_dataclass(model_args):
        model_args = dataclasses.asdict(model_args)
    elif not isinstance(model_args, Mapping):
        model_args = vars(model_args)
    bad = [key for key, value in state.items() if not isinstance(value, torch.Tensor)]
    if bad:
        raise ValueError(f"convert_nanogpt: {source}: 'model' entries {bad[:5]} are not tensors")
    return dict(state), dict(model_args)


def _strip_prefixes(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Remove torch.compile's `_orig_mod.` and DDP's `module.` from every key."""
    stripped: dict[str, torch.Tensor] = {}
    for original, value in state.items():
        key = original
        while key.startswith(_PREFIXES):
            key = key[len(next(p for p in _PREFIXES if key.startswith(p))) :]
        if key in stripped:
            raise ValueError(f"convert_nanogpt: {source}: {original!r} and another key both stand for {key!r}")
        stripped[key] = value
    return stripped


def nanogpt_config(
    model_args: Mapping[str, Any],
    state: Mapping[str, torch.Tensor],
    config_overrides: Mapping[str, Any] | None = None,
    source: str = "the checkpoint",
) -> HfEmbedConfig:
    """The HfEmbedConfig of a checkpoint: its `model_args`, then what the weights show, then the overrides."""
    _check_architecture(model_args, source)
    _report_ignored_args(model_args, source)
    kwargs = {name: model_args[name] for name in CARRIED_ARGS if model_args.get(name) is not None}
    for name, value in _shapes_of(state).items():
        kwargs.setdefault(name, value)
    kwargs["activation_function"] = "gelu"  # nanoGPT's nn.GELU(): the exact erf form
    kwargs.update(_checked_overrides(config_overrides))
    if "n_head" not in kwargs:
        raise ValueError(
            f"convert_nanogpt: {source} has no model_args['n_head'] and the weights do not show it; "
            "pass config_overrides={'n_head': ...}"
        )
    try:
        return HfEmbedConfig(**kwargs)
    except (ValueError, TypeError) as err:
        raise ValueError(f"convert_nanogpt: {source}: the checkpoint's configuration is not valid here: {err}") from err


def _check_architecture(model_args: Mapping[str, Any], source: str) -> None:
    for name, allowed in ARCHITECTURE_ARGS.items():
        if name not in model_args:
            continue
        values = allowed(model_args) if callable(allowed) else allowed
        if model_args[name] not in values:
            raise ValueError(
                f"convert_nanogpt: {source} has model_args[{name!r}]={model_args[name]!r}, an architecture hf_embed "
                f"does not have; only GPT-2-style checkpoints convert (allowed: {list(values)})"
            )
    if model_args.get("qkv_bias") and not model_args.get("bias", True):
        raise ValueError(
            f"convert_nanogpt: {source} has model_args['qkv_bias']=True with bias=False; hf_embed has one `bias` "
            "for every layer (allowed: qkv_bias False or None when bias=False)"
        )


def _report_ignored_args(model_args: Mapping[str, Any], source: str) -> None:
    known = {*CARRIED_ARGS, *RUN_ARGS, *ARCHITECTURE_ARGS}
    run_settings = sorted(name for name in RUN_ARGS if model_args.get(name) not in (None, False))
    unknown = sorted(name for name in model_args if name not in known)
    if run_settings:
        logger.warning(
            "convert_nanogpt: %s: run settings not carried into the config (initialisation and import/export "
            "files; the weights are imported instead): %s",
            source,
            run_settings,
        )
    if unknown:
        logger.warning("convert_nanogpt: %s: model_args unknown to hf_embed, ignored: %s", source, unknown)
    if model_args.get("use_rotary_embeddings") or model_args.get("use_fire_embeddings"):
        logger.warning(
            "convert_nanogpt: %s: RoPE/SoAP/FIRE follow hf_embed's definitions (with its fixes to the upstream "
            "code); the logits match the source run only where the two definitions agree",
            source,
        )


def _shapes_of(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Config values the weights themselves show (used where model_args are silent)."""
    shapes: dict[str, Any] = {}
    if "transformer.wte.weight" in state:
        shapes["vocab_size"] = state["transformer.wte.weight"].shape[0]
    if "transformer.ln_f.weight" in state:
        shapes["n_embd"] = state["transformer.ln_f.weight"].shape[0]
        shapes["bias"] = "transformer.ln_f.bias" in state
    if "transformer.scale_up.weight" in state:
        shapes["n_embd_wte"] = state["transformer.scale_up.weight"].shape[1]
    shapes["use_abs_pos_embeddings"] = "transformer.wpe.weight" in state
    if "transformer.wpe.weight" in state:
        shapes["block_size"] = state["transformer.wpe.weight"].shape[0]
    layers = {int(m.group(1)) for key in state if (m := re.match(r"transformer\.h\.(\d+)\.", key))}
    if layers:
        shapes["n_layer"] = max(layers) + 1
    head, table = state.get("lm_head.weight"), state.get("transformer.wte.weight")
    shapes["wte_weight_tying"] = head is None or (table is not None and torch.equal(head, table))
    return shapes


def _checked_overrides(config_overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    if config_overrides is None:
        return {}
    if not isinstance(config_overrides, Mapping):
        raise ValueError(f"config_overrides={config_overrides!r} is not allowed: expected a dict of config fields")
    fields = {field.name for field in HfEmbedConfig.argument_fields()}
    unknown = [name for name in config_overrides if name not in fields]
    if unknown:
        raise ValueError(
            f"config_overrides has unknown field(s) {unknown}: expected HfEmbedConfig fields such as n_head, "
            "dropout, activation_function"
        )
    return dict(config_overrides)


def _map_weights(state: dict, config: HfEmbedConfig, source: str) -> dict[str, torch.Tensor]:
    """Rename and fuse the checkpoint's weights into our state-dict names (checks tied copies, drops buffers)."""
    state = _fuse_split_qkv(state, config, source)
    state = _drop_buffers(state, source)
    state = _rename_fire(state, config, source)
    _drop_tied_copy(state, "lm_head.weight", "transformer.wte.weight", config.wte_weight_tying, source)
    scale_tied = config.n_embd_wte is not None and config.n_embd_wte_scale_tying
    _drop_tied_copy(state, "transformer.scale_down.weight", "transformer.scale_up.weight", scale_tied, source)
    return state


def _fuse_split_qkv(state: dict, config: HfEmbedConfig, source: str) -> dict:
    """ReaLLM-Forge's `c_attn_q`, `c_attn_k`, `c_attn_v` -> one `c_attn` (q, k, v stacked on the output axis)."""
    for layer in range(config.n_layer):
        prefix = f"transformer.h.{layer}.attn."
        fused = {}
        for kind in ("weight", "bias"):
            parts = [state.pop(f"{prefix}c_attn_{p}.{kind}", None) for p in "qkv"]
            if all(part is None for part in parts):
                continue
            if any(part is None for part in parts):
                raise ValueError(f"convert_nanogpt: {source}: layer {layer} has only some of c_attn_q/k/v.{kind}")
            fused[kind] = state[f"{prefix}c_attn.{kind}"] = torch.cat(parts, dim=0)
        if "weight" in fused and "bias" not in fused and config.bias:
            # split projections without biases are ReaLLM-Forge's qkv_bias=False: a zero bias is exact
            state[f"{prefix}c_attn.bias"] = torch.zeros(fused["weight"].shape[0], dtype=fused["weight"].dtype)
    return state


def _drop_buffers(state: dict, source: str) -> dict:
    """Causal-mask (`attn.bias`, 4-D) and rotary buffers hold no learned values; they are recomputed."""
    dropped = [
        key
        for key, value in state.items()
        if (key.endswith((".attn.bias", ".attn.masked_bias")) and value.dim() == 4) or ".rotary_emb_" in key
    ]
    if dropped:
        logger.info("convert_nanogpt: %s: recomputed buffers, not copied: %s", source, dropped)
    return {key: value for key, value in state.items() if key not in dropped}


def _rename_fire(state: dict, config: HfEmbedConfig, source: str) -> dict:
    """`transformer.h.{i}.attn.fire_pos_enc.X` -> `…attn.fire.X`, or `transformer.fire.X` once when shared."""
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        match = re.match(r"(transformer\.h\.\d+\.attn\.)fire_pos_enc\.(.+)", key)
        if match is None:
            renamed[key] = value
            continue
        name = match.group(2)
        target = f"transformer.fire.{name}" if config.shared_fire_embeddings else f"{match.group(1)}fire.{name}"
        if target.endswith(".init_L"):  # upstream keeps the fixed L_init as a frozen tensor
            if float(value) != config.fire_init_L:
                raise ValueError(
                    f"convert_nanogpt: {source}: {key}={float(value)} but fire_init_L={config.fire_init_L}"
                )
            continue
        if target in renamed and not torch.equal(renamed[target], value):
            raise ValueError(f"convert_nanogpt: {source}: shared FIRE weight {key} differs between layers")
        renamed[target] = value
    return renamed


def _drop_tied_copy(state: dict, copy_key: str, source_key: str, tied: bool, source: str) -> None:
    if not tied or copy_key not in state:
        return
    if source_key in state and not torch.equal(state[copy_key], state[source_key]):
        raise ValueError(
            f"convert_nanogpt: {source}: {copy_key} differs from {source_key}, but the config ties them; "
            f"pass config_overrides that untie them (wte_weight_tying / n_embd_wte_scale_tying = False)"
        )
    del state[copy_key]


def _load_weights(model: HfEmbedForCausalLM, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy every weight, with clear errors for unknown, missing and mis-shaped ones."""
    target = model.state_dict()
    tied = {"lm_head.weight"} if model.config.wte_weight_tying else set()
    unknown = sorted(key for key in state if key not in target)
    missing = sorted(key for key in target if key not in state and key not in tied)
    if unknown or missing:
        raise ValueError(
            f"convert_nanogpt: {source}: the weights do not map onto the GPT-2-style architecture; "
            f"unknown keys {unknown}, missing keys {missing}"
        )
    wrong = [
        f"{k}: {tuple(v.shape)} vs {tuple(target[k].shape)}" for k, v in state.items() if v.shape != target[k].shape
    ]
    if wrong:
        raise ValueError(f"convert_nanogpt: {source}: shapes (checkpoint vs config) differ: {wrong}")
    if tied:
        state = {**state, "lm_head.weight": state["transformer.wte.weight"]}
    model.load_state_dict({key: value.to(target[key].dtype) for key, value in state.items()}, strict=True)
