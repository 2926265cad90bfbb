"""bfloat16 on CPU: the forward pass is finite, and follows float32, for every position mechanism at block_size and,
without learned absolute positions, at 4 × block_size (FIRE's threshold L is set inside that range so both of its
paths, i < L and i ≥ L, run in bfloat16)."""

import pytest
import torch
from torch.testing import assert_close

from hf_embed import HfEmbedConfig, HfEmbedForCausalLM

BLOCK = 64
BASE = dict(vocab_size=64, n_embd=32, n_layer=1, n_head=4, block_size=BLOCK, n_embd_wte=16, pad_token_id=0)
NO_ABS = dict(use_abs_pos_embeddings=False)
FIRE = dict(use_fire_embeddings=True, fire_init_L=100.0)
MECHANISMS = {
    "abs": {},
    "none": NO_ABS,
    "rope": {**NO_ABS, "use_rotary_embeddings": True},
    "rope-partial": {**NO_ABS, "use_rotary_embeddings": True, "rope_length": 4},
    "soap": {**NO_ABS, "use_rotary_embeddings": True, "rope_variant": "soap", "sym_rot_num_angles": 64},
    "fire": {**NO_ABS, **FIRE},
    "shared-fire": {**NO_ABS, **FIRE, "shared_fire_embeddings": True},
    "rope-fire": {**NO_ABS, **FIRE, "use_rotary_embeddings": True},
    "abs-rope-fire": {**FIRE, "use_rotary_embeddings": True},
}


def _pair(mechanism: str, attn: str, weight_std: float | None = None):
    """The same weights in float32 and in bfloat16."""
    torch.manual_seed(0)
    model = HfEmbedForCausalLM(HfEmbedConfig(**BASE, **MECHANISMS[mechanism], attn_implementation=attn)).eval()
    if weight_std is not None:  # weights far from initialisation, as after training: large logits everywhere
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.dim() == 2:
                    parameter.normal_(0, weight_std)
    half = HfEmbedForCausalLM(model.config).eval()
    half.load_state_dict(model.state_dict())
    return model, half.to(torch.bfloat16)


def _lengths(mechanism: str) -> list[int]:
    return [BLOCK] if MECHANISMS[mechanism].get("use_abs_pos_embeddings", True) else [BLOCK, 4 * BLOCK]


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("mechanism", list(MECHANISMS))
def test_bfloat16_forward_is_finite_and_follows_float32(mechanism, attn):
    full, half = _pair(mechanism, attn)
    for length in _lengths(mechanism):
        ids = torch.randint(0, 64, (1, length), generator=torch.Generator().manual_seed(length))
        with torch.no_grad():
            want = full(ids).logits
            got = half(ids).logits
        assert got.dtype == torch.bfloat16
        assert torch.isfinite(got).all(), f"non-finite bfloat16 logits at length {length}"
        scale = want.abs().max()
        assert_close(got.float() / scale, want / scale, rtol=0, atol=0.05)  # bfloat16 keeps ~3 significant digits


@pytest.mark.parametrize("mechanism", ["abs-rope-fire", "shared-fire", "soap"])
def test_bfloat16_stays_finite_with_large_weights(mechanism):
    _, half = _pair(mechanism, "eager", weight_std=1.0)
    length = _lengths(mechanism)[-1]
    ids = torch.randint(0, 64, (2, length), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = half(ids).logits
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("mechanism", ["fire", "rope", "abs-rope-fire"])
def test_bfloat16_left_padding_keeps_every_row_finite(mechanism, attn):
    """Padded query rows see no key at all: masked with finfo.min (never -inf), they must not turn into NaN."""
    _, half = _pair(mechanism, attn)
    ids = torch.randint(1, 64, (2, BLOCK), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[0, : BLOCK // 2] = 0
    with torch.no_grad():
        logits = half(ids, attention_mask=mask).logits
    assert torch.isfinite(logits).all()
