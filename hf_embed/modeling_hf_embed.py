"""hf_embed decoder: GPT-2 blocks under a researchable embedding stack.

    ids -> wte (V, r) -> scale_up (r -> d) [+ wpe] -> blocks (RoPE on q, k; FIRE bias on the logits) -> ln_f
        -> scale_down (d -> r) -> lm_head (V, r)

With `n_embd_wte` unset, r = d and the adapters are absent. Relative position mechanisms each sit in one slot
with one call shape (`rotary(position_ids) -> rotation`, `fire(mask, offset) -> mask`); an absent one is a no-op.
"""

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel, slice_logits_to_keep
from transformers.utils import logging
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_hf_embed import HfEmbedConfig
from .embeddings import PositionEmbedding, TokenEmbedding, initial_token_table
from .fire import FireBias, NoBias, additive_causal_mask, sdpa_attention_with_learned_mask
from .numpy_io import check_array, load_npy, load_npz, save_npy, save_npz
from .rotary import NoRotaryEmbedding, RotaryEmbedding, Rotation

logger = logging.get_logger(__name__)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q kᵀ · scaling + mask) v.  q, k, v: (B, H, T, hd) -> (B, T, H, hd), weights (B, H, T, S)"""
    weights = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = F.softmax(weights, dim=-1, dtype=torch.float32).to(value.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2), weights


class BlockLinear(nn.Linear):
    """`nn.Linear` (weight shape (out, in), the state-dict layout) whose weight lies in memory as (in, out), the order
    GPT-2's Conv1D keeps. A one-token product (decoding) then reads the weight row after row, which MKL's
    matrix-vector kernel does about 1.5× faster on CPU; batched products (training, prefill) run at the same speed
    in either order. Loading replaces parameters, so `HfEmbedPreTrainedModel.from_pretrained` lays them out again."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__(in_features, out_features, bias=bias)
        self.lay_out_weight()

    def lay_out_weight(self) -> None:
        weight = self.weight
        if weight.stride() != (1, weight.shape[0]):
            self.weight = nn.Parameter(weight.detach().t().contiguous().t(), requires_grad=weight.requires_grad)


# "sdpa" with a FIRE mask that needs a gradient: PyTorch's CPU SDPA would use its math kernel (see fire.py).
ATTENTION_OVERRIDES = {"sdpa": sdpa_attention_with_learned_mask}


class HfEmbedAttention(nn.Module):
    """Causal self-attention with a fused qkv projection; RoPE rotates q and k, FIRE biases the logits."""

    def __init__(self, config: HfEmbedConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.scaling = self.head_dim**-0.5
        self.is_causal = True
        self.c_attn = BlockLinear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = BlockLinear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        per_layer_fire = config.use_fire_embeddings and not config.shared_fire_embeddings
        self.fire = FireBias(config) if per_layer_fire else NoBias()

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        rotation: Rotation,
        q_offset: int,
        cache: Cache | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        q, k, v = self.c_attn(hidden_states).split(self.config.n_embd, dim=2)
        heads = (*hidden_states.shape[:-1], -1, self.head_dim)
        q, k, v = (t.view(heads).transpose(1, 2) for t in (q, k, v))  # (B, H, T, hd)
        q, k = rotation(q), rotation(k)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        mask = self.fire(attention_mask, q_offset)

        implementation = self.config._attn_implementation
        attention: Callable = ATTENTION_OVERRIDES.get(implementation) or ALL_ATTENTION_FUNCTIONS.get_interface(
            implementation, eager_attention_forward
        )
        with self.fire.recompute_when_saved(mask, attention_mask, q_offset):  # a per-layer FIRE mask is not kept
            output, weights = attention(
                self,
                q,
                k,
                v,
                mask,
                dropout=self.config.dropout if self.training else 0.0,
                scaling=self.scaling,
                **kwargs,
            )
        output = output.reshape(*output.shape[:-2], -1).contiguous()  # (B, T, d)
        return self.resid_dropout(self.c_proj(output)), weights


# The same function in one fused kernel: "gelu_new" (GPT-2's tanh approximation) is F.gelu(approximate="tanh"),
# equal to within float rounding (≤ 5e-7), and its forward + backward run about 5× faster than the eight-op formula.
FUSED_ACTIVATIONS = {"gelu_new": "gelu_pytorch_tanh"}


class HfEmbedMLP(nn.Module):
    def __init__(self, config: HfEmbedConfig):
        super().__init__()
        self.c_fc = BlockLinear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        activation = config.activation_function
        if activation not in ACT2FN:
            raise ValueError(f"activation_function={activation!r} is not allowed: expected one of {sorted(ACT2FN)}")
        self.act = ACT2FN[FUSED_ACTIVATIONS.get(activation, activation)]
        self.c_proj = BlockLinear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class HfEmbedBlock(GradientCheckpointingLayer):
    """Pre-LayerNorm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, config: HfEmbedConfig, layer_idx: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.attn = HfEmbedAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.mlp = HfEmbedMLP(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        rotation: Rotation,
        q_offset: int,
        cache: Cache | None = None,
        **kwargs,
    ) -> torch.Tensor:
        attn_output, _ = self.attn(self.ln_1(hidden_states), attention_mask, rotation, q_offset, cache=cache, **kwargs)
        hidden_states = hidden_states + attn_output
        return hidden_states + self.mlp(self.ln_2(hidden_states))


class HfEmbedPreTrainedModel(PreTrainedModel):
    config_class = HfEmbedConfig
    config: HfEmbedConfig
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["HfEmbedBlock"]
    _supports_sdpa = True
    _supports_attention_backend = True
    _can_record_outputs = {
        "hidden_states": HfEmbedBlock,
        "attentions": OutputRecorder(HfEmbedAttention, index=1),
    }

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """How every parameter starts:

        - `wte`: `init_variant` (see `EMBEDDING_INITS`), on its real (V, n_embd_wte or n_embd) shape;
        - `wpe`: N(embedding_mean_init, embedding_std_init);
        - every Linear (qkv, MLP, scale adapters, untied head, FIRE MLP): N(0, initializer_range), bias 0;
          the residual projections `c_proj`: N(0, initializer_range / √(2·n_layer)) (GPT-2);
        - LayerNorm: weight 1, bias 0;
        - FIRE: c = fire_init_c, L_multiplier = 1.
        """
        config = self.config
        if isinstance(module, TokenEmbedding):
            init.copy_(module.weight, initial_token_table(config).to(module.weight.dtype))
        elif isinstance(module, PositionEmbedding):
            init.normal_(module.weight, mean=config.embedding_mean_init, std=config.embedding_std_init)
        elif isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=config.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, FireBias):
            init.constant_(module.c, config.fire_init_c)
            init.constant_(module.L_multiplier, 1.0)
        if isinstance(module, (HfEmbedAttention, HfEmbedMLP)):
            init.normal_(module.c_proj.weight, mean=0.0, std=config.initializer_range / math.sqrt(2 * config.n_layer))

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """As `PreTrainedModel.from_pretrained`; then re-applies the freezing the config asks for and the memory order
        of `BlockLinear` weights (loading replaces parameters, which drops both). Import paths in the config are never
        read here."""
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        for module in model.modules():
            if isinstance(module, BlockLinear):
                module.lay_out_weight()
        model.base_model.apply_freezing()
        return loaded

    # --- numpy import / export of the token stack (both model classes) ---
    def export_wte_npy(self, path: str) -> None:
        """Write the token table `wte`, float32 (V, n_embd_wte or n_embd), with `np.save` (atomically)."""
        save_npy(path, self.base_model.wte.weight.detach().float().cpu().numpy())

    def import_wte_npy(self, path: str, freeze: bool = False) -> None:
        """Copy a (V, n_embd_wte or n_embd) `.npy` array into `wte` (and the tied head); `freeze` stops its training."""
        base = self.base_model
        table = load_npy(path, tuple(base.wte.weight.shape), "import_wte_npy")
        base.wte.weight.data.copy_(torch.from_numpy(table))
        if freeze:
            self.config.import_wte_freeze = True
            base.apply_freezing()

    def export_scale_matrices_npz(self, path: str) -> None:
        """Write keys `scale_up` and `scale_down`, each (r, d): up e ↦ e @ scale_up, down h ↦ h @ scale_downᵀ."""
        base = self.base_model
        base.require_factorized("export_scale_matrices_npz")
        up = base.scale_up.weight.detach().float().cpu().numpy().T
        down = up if base.scale_down is None else base.scale_down.weight.detach().float().cpu().numpy().T
        save_npz(path, scale_up=up, scale_down=down)

    def import_scale_matrices_npz(self, path: str, freeze: bool = False) -> None:
        """Read `scale_up` (and `scale_down`), each (r, d), into the adapters; `freeze` stops their training."""
        base = self.base_model
        base.require_factorized("import_scale_matrices_npz")
        up, down = _read_scale_matrices(path, self.config)
        base.scale_up.weight.data.copy_(torch.from_numpy(up.T))
        if base.scale_down is not None:
            base.scale_down.weight.data.copy_(torch.from_numpy(down.T))
        if freeze:
            self.config.import_scale_matrices_freeze = True
            base.apply_freezing()


def _read_scale_matrices(path: str, config: HfEmbedConfig) -> tuple[np.ndarray, np.ndarray]:
    """The (scale_up, scale_down) arrays of an npz file, each checked to be (r, d)."""
    argument, shape = "import_scale_matrices_npz", (config.n_embd_wte, config.n_embd)
    arrays = load_npz(path, argument)
    tied = config.n_embd_wte_scale_tying
    required = ["scale_up"] if tied else ["scale_up", "scale_down"]
    missing = [key for key in required if key not in arrays]
    if missing:
        raise ValueError(f"{argument}: {path!r} lacks key(s) {missing}; found {sorted(arrays)}; expected {required}")
    up = check_array(arrays["scale_up"], shape, argument, f"{path!r} key 'scale_up'")
    if "scale_down" not in arrays:
        return up, up
    down = check_array(arrays["scale_down"], shape, argument, f"{path!r} key 'scale_down'")
    if tied and not np.array_equal(up, down):
        raise ValueError(
            f"{argument}: {path!r} has different 'scale_up' and 'scale_down' arrays, but n_embd_wte_scale_tying=True "
            "keeps one matrix; expected equal arrays (or only 'scale_up'), or set n_embd_wte_scale_tying=False"
        )
    return up, down


class HfEmbedModel(HfEmbedPreTrainedModel):
    """The decoder without a head; `last_hidden_state` is in model space (d), after `ln_f`."""

    def __init__(self, config: HfEmbedConfig):
        super().__init__(config)
        dim = config.token_table_dim
        self.wte = TokenEmbedding(config.vocab_size, dim)
        factorized = config.n_embd_wte is not None
        self.scale_up = nn.Linear(dim, config.n_embd, bias=False) if factorized else None
        untied = factorized and not config.n_embd_wte_scale_tying
        self.scale_down = nn.Linear(dim, config.n_embd, bias=False) if untied else None
        self.wpe = PositionEmbedding(config.block_size, config.n_embd) if config.use_abs_pos_embeddings else None
        self.rotary = RotaryEmbedding(config) if config.use_rotary_embeddings else NoRotaryEmbedding()
        self.fire = FireBias(config) if config.shared_fire_embeddings else NoBias()
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList([HfEmbedBlock(config, i) for i in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.gradient_checkpointing = False
        self.post_init()

    def post_init(self) -> None:
        super().post_init()
        if not self.wte.weight.is_meta:  # built from a config, not being loaded by from_pretrained
            self._import_from_config()
        self.apply_freezing()

    def _import_from_config(self) -> None:
        config = self.config
        if config.import_wte_npy:
            self.import_wte_npy(config.import_wte_npy)
        if config.import_scale_matrices_npz:
            self.import_scale_matrices_npz(config.import_scale_matrices_npz)
        elif config.import_scale_matrices_freeze:
            logger.warning(
                "import_scale_matrices_freeze=True without import_scale_matrices_npz: the scale adapters stay at "
                "their random initialisation, a fixed random projection"
            )

    def apply_freezing(self) -> None:
        """Set `requires_grad=False` on what the config freezes (never sets it back to True)."""
        if self.config.import_wte_freeze:
            self.wte.weight.requires_grad_(False)
        if self.config.import_scale_matrices_freeze:
            for adapter in (self.scale_up, self.scale_down):
                if adapter is not None:
                    adapter.weight.requires_grad_(False)

    def require_factorized(self, argument: str) -> None:
        if self.scale_up is None:
            raise ValueError(f"{argument} needs a factorized token table: this model has n_embd_wte=None")

    def get_input_embeddings(self) -> nn.Embedding:
        return self.wte

    def set_input_embeddings(self, new_embeddings: nn.Embedding) -> None:
        self.wte = new_embeddings

    def scale_embeddings(self, embeds: torch.Tensor) -> torch.Tensor:
        """Token-table rows (…, r) -> model space (…, d): e ↦ e Wᵀ."""
        return embeds if self.scale_up is None else self.scale_up(embeds)

    def project_down(self, hidden: torch.Tensor) -> torch.Tensor:
        """Model space (…, d) -> token-table space (…, r): h ↦ h W (tied: W is scale_up's own matrix)."""
        adapter = self.scale_down if self.scale_down is not None else self.scale_up
        return hidden if adapter is None else F.linear(hidden, adapter.weight.t())

    def _check_length(self, length: int) -> None:
        if self.wpe is not None and length > self.config.block_size:
            raise ValueError(
                f"input of {length} positions (cached + new) exceeds block_size={self.config.block_size}, the number "
                "of learned absolute positions (use_abs_pos_embeddings=True); shorten the input, or use a model with "
                "a larger block_size, or one without absolute positions (RoPE/FIRE run past block_size)"
            )

    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """`inputs_embeds` are token-table rows (…, n_embd_wte or n_embd), as `get_input_embeddings()` returns."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.wte(input_ids)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        # int(): a static cache returns its live length tensor, which each layer's cache.update then advances.
        q_offset = int(cache.get_seq_length()) if cache is not None else 0
        q_len = inputs_embeds.shape[1]
        self._check_length(q_offset + q_len)
        if position_ids is None:
            position_ids = torch.arange(q_offset, q_offset + q_len, device=inputs_embeds.device)[None]

        hidden_states = self.scale_embeddings(inputs_embeds)
        if self.wpe is not None:
            hidden_states = hidden_states + self.wpe(position_ids)
        mask = self._attention_mask(hidden_states, attention_mask, cache, position_ids, q_offset)
        rotation = self.rotary(position_ids, hidden_states.dtype)
        hidden_states = self.drop(hidden_states)
        for block in self.h:
            hidden_states = block(hidden_states, mask, rotation, q_offset, cache=cache, **kwargs)
        return BaseModelOutputWithPast(last_hidden_state=self.ln_f(hidden_states), cache=cache if use_cache else None)

    def _attention_mask(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        cache: Cache | None,
        position_ids: torch.Tensor,
        q_offset: int,
    ) -> torch.Tensor | None:
        """transformers' causal mask for the attention backend; with FIRE, one additive float mask for every
        backend (0 / finfo.min, never −inf), plus the shared FIRE bias computed once for all layers."""
        if not self.config.use_fire_embeddings:
            return create_causal_mask(
                config=self.config,
                inputs_embeds=hidden_states,
                attention_mask=attention_mask,
                cache=cache,
                position_ids=position_ids,
            )
        q_len = hidden_states.shape[1]
        k_len = cache.get_mask_sizes(q_len, 0)[0] if cache is not None else None  # a static cache: its full length
        mask = additive_causal_mask(
            attention_mask, q_offset, q_len, hidden_states.dtype, hidden_states.device, k_len=k_len
        )
        return self.fire(mask, q_offset)


class HfEmbedForCausalLM(HfEmbedPreTrainedModel, GenerationMixin):
    """The decoder with a language-model head (V, r), tied to `wte` when `wte_weight_tying`."""

    _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}

    def __init__(self, config: HfEmbedConfig):
        super().__init__(config)
        self.transformer = HfEmbedModel(config)
        self.lm_head = nn.Linear(config.token_table_dim, config.vocab_size, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        outputs: BaseModelOutputWithPast = self.transformer(
            input_ids,
            cache=cache,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)
        logits = self.lm_head(self.transformer.project_down(hidden_states))
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


__all__ = ["HfEmbedPreTrainedModel", "HfEmbedModel", "HfEmbedForCausalLM"]
