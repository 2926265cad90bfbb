"""Conversion of transformers' GPT-2 into an equivalent `HfEmbedForCausalLM` (same logits)."""

from transformers import GPT2LMHeadModel

from .configuration_hf_embed import HfEmbedConfig
from .modeling_hf_embed import HfEmbedForCausalLM

# GPT-2 options our architecture does not have: name -> the value that means "as GPT-2 usually is"
_GPT2_REQUIRED = {
    "scale_attn_weights": True,
    "scale_attn_by_inverse_layer_idx": False,
    "add_cross_attention": False,
}


def gpt2_config_to_hf_embed(gpt2_config, **overrides) -> HfEmbedConfig:
    """The `HfEmbedConfig` of the same architecture as a `GPT2Config` (learned positions, tied as GPT-2 is)."""
    for name, value in _GPT2_REQUIRED.items():
        if getattr(gpt2_config, name, value) != value:
            raise ValueError(
                f"convert_gpt2: GPT2Config.{name}={getattr(gpt2_config, name)!r} is not supported; expected {value!r}"
            )
    inner = gpt2_config.n_inner
    if inner is not None and inner != 4 * gpt2_config.n_embd:
        raise ValueError(f"convert_gpt2: GPT2Config.n_inner={inner} is not supported; expected None or 4*n_embd")
    kwargs = dict(
        vocab_size=gpt2_config.vocab_size,
        n_embd=gpt2_config.n_embd,
        n_layer=gpt2_config.n_layer,
        n_head=gpt2_config.n_head,
        block_size=gpt2_config.n_positions,
        activation_function=gpt2_config.activation_function,
        layer_norm_epsilon=gpt2_config.layer_norm_epsilon,
        dropout=float(gpt2_config.resid_pdrop),
        wte_weight_tying=bool(gpt2_config.tie_word_embeddings),
        bos_token_id=gpt2_config.bos_token_id,
        eos_token_id=gpt2_config.eos_token_id,
        pad_token_id=gpt2_config.pad_token_id,
        attn_implementation=gpt2_config._attn_implementation,
    )
    kwargs.update(overrides)
    return HfEmbedConfig(**kwargs)


def convert_gpt2(model: GPT2LMHeadModel) -> HfEmbedForCausalLM:
    """A transformers `GPT2LMHeadModel` (any size) -> an `HfEmbedForCausalLM` with the same logits.

    GPT-2's Conv1D weights are stored (in, out); ours are `nn.Linear` (out, in), so they are transposed.
    """
    config = gpt2_config_to_hf_embed(model.config)
    state = {}
    for name, tensor in model.state_dict().items():
        if name.endswith(".attn.bias") or name.endswith(".attn.masked_bias"):
            continue  # old causal-mask buffers
        is_conv1d = any(name.endswith(f"{part}.weight") for part in ("c_attn", "c_proj", "c_fc"))
        state[name] = tensor.t().contiguous() if is_conv1d else tensor
    converted = HfEmbedForCausalLM(config).to(dtype=model.dtype)
    missing, unexpected = converted.load_state_dict(state, strict=False)
    missing = [key for key in missing if not (config.wte_weight_tying and key == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"convert_gpt2: weights did not map; missing {missing}, unexpected {unexpected}")
    converted.tie_weights()
    return converted.eval() if not model.training else converted
