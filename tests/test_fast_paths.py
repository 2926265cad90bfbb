"""The speed and memory paths: each computes what the plain formula computes, gradients included."""

import pytest
import torch
from conftest import tiny_model
from torch.nn import functional as F

from hf_embed import HfEmbedForCausalLM
from hf_embed import fire as fire_module
from hf_embed.fire import FireBias, sdpa_attention_with_learned_mask
from hf_embed.modeling_hf_embed import BlockLinear
from hf_embed.rotary import Rotation


def gradients(model: HfEmbedForCausalLM, implementation: str, ids, attention_mask) -> tuple[float, dict]:
    model.set_attn_implementation(implementation)
    model.zero_grad(set_to_none=True)
    labels = ids.masked_fill(attention_mask == 0, -100)
    loss = model(ids, attention_mask=attention_mask, labels=labels).loss
    loss.backward()
    return loss.item(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("fire_init_L", [512.0, 6.0])  # all rows Toeplitz; most rows past L
def test_learned_mask_attention_trains_as_eager_does(shared, fire_init_L):
    """SDPA with a FIRE mask that needs a gradient runs `_LearnedMaskAttention` (blocks, causal skipping, mask
    recomputed in backward); loss and every gradient equal the eager path's, with right and left padding."""
    model = tiny_model(use_fire_embeddings=True, shared_fire_embeddings=shared, fire_init_L=fire_init_L).train()
    ids = torch.randint(2, 97, (3, 40), generator=torch.Generator().manual_seed(0))
    attention_mask = torch.ones_like(ids)
    attention_mask[0, 31:] = 0  # right padding
    attention_mask[1, :7] = 0  # left padding: rows whose every key is masked
    eager_loss, eager = gradients(model, "eager", ids, attention_mask)
    sdpa_loss, sdpa = gradients(model, "sdpa", ids, attention_mask)
    assert sdpa_loss == pytest.approx(eager_loss, abs=1e-5)
    assert eager.keys() == sdpa.keys()
    for name in eager:
        torch.testing.assert_close(sdpa[name], eager[name], rtol=1e-4, atol=1e-5, msg=name)


def test_learned_mask_attention_takes_any_mask():
    """A mask with no causal structure (nothing to skip) and one broadcast over the batch: output and gradients
    of q, k, v and the mask equal PyTorch's math attention."""
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 37, 8, generator=generator, dtype=torch.float64) for _ in range(3))
    for mask_shape in [(2, 3, 37, 37), (1, 3, 37, 37), (2, 1, 37, 37)]:
        mask = torch.randn(mask_shape, generator=generator, dtype=torch.float64)
        mask[..., 5:9] = torch.finfo(torch.float64).min  # some keys hidden from every row, none skippable
        inputs = [t.clone().requires_grad_() for t in (q, k, v, mask)]
        reference = [t.clone().requires_grad_() for t in (q, k, v, mask)]
        ours, _ = sdpa_attention_with_learned_mask(None, *inputs, scaling=0.3)
        theirs = F.scaled_dot_product_attention(*reference[:3], attn_mask=reference[3], scale=0.3).transpose(1, 2)
        grad = torch.randn_like(theirs)
        torch.testing.assert_close(ours, theirs)
        for mine, other in zip(torch.autograd.grad(ours, inputs, grad), torch.autograd.grad(theirs, reference, grad)):
            torch.testing.assert_close(mine, other)


def test_per_layer_fire_mask_is_recomputed_not_kept(monkeypatch):
    """Training evaluates each per-layer FIRE bias twice (forward, then backward) instead of keeping the
    (…, H, T, S) mask between the passes; inference evaluates it once."""
    model = tiny_model(use_fire_embeddings=True).train()
    calls = []
    original = FireBias.bias
    monkeypatch.setattr(FireBias, "bias", lambda self, *args: calls.append(args) or original(self, *args))
    ids = torch.randint(2, 97, (2, 24), generator=torch.Generator().manual_seed(0))
    model(ids, labels=ids).loss.backward()
    assert len(calls) == 2 * model.config.n_layer and calls[0] == calls[1] == (0, 24, 24)
    calls.clear()
    with torch.no_grad():
        model(ids)
    assert len(calls) == model.config.n_layer


def test_late_fire_rows_in_chunks_equal_the_direct_formula(monkeypatch):
    """Rows i ≥ L evaluated a few rows at a time (recomputed in backward) give the bias and the gradients of the
    MLP evaluated on the whole (q_len, k_len) grid at once."""
    monkeypatch.setattr(fire_module, "_LATE_CHUNK", 3 * 16 * 32)  # 3 rows of 16 keys per chunk
    module = tiny_model(use_fire_embeddings=True, fire_init_L=4.0).transformer.h[0].attn.fire
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(1)) * 0.3)
    c, threshold = module.c.abs(), (module.L_multiplier * module.L_init).abs()
    i, j = torch.arange(16.0)[:, None], torch.arange(16.0)
    normaliser = torch.log(c * torch.maximum(i, threshold) + module.log_bias).clamp_min(1e-6)
    direct = module.mlp((torch.log(c * (i - j).clamp_min(0) + module.log_bias) / normaliser)[..., None])
    direct = direct.permute(2, 0, 1)
    chunked = module.bias(0, 16, 16)
    torch.testing.assert_close(chunked, direct, rtol=1e-5, atol=1e-5)
    weights = torch.randn(direct.shape, generator=torch.Generator().manual_seed(2))
    parameters = list(module.parameters())
    for mine, other in zip(
        torch.autograd.grad((chunked * weights).sum(), parameters),
        torch.autograd.grad((direct * weights).sum(), parameters),
    ):
        torch.testing.assert_close(mine, other, rtol=1e-4, atol=1e-5)


def test_block_linear_weights_keep_gpt2_memory_order_through_saving(tmp_path):
    """Shape (out, in) in the state dict, (in, out) in memory, before and after save/from_pretrained."""
    model = tiny_model()
    linears = [m for m in model.modules() if isinstance(m, BlockLinear)]
    assert len(linears) == 4 * model.config.n_layer
    for linear in linears:
        assert linear.weight.stride() == (1, linear.out_features)
    model.save_pretrained(tmp_path)
    loaded = HfEmbedForCausalLM.from_pretrained(tmp_path)
    for name, linear in loaded.named_modules():
        if isinstance(linear, BlockLinear):
            assert linear.weight.stride() == (1, linear.out_features), name
    torch.testing.assert_close(loaded.state_dict(), model.state_dict(), rtol=0, atol=0)


@pytest.mark.parametrize("length", [8, 4])
def test_complex_rotation_equals_the_real_formula_with_gradients(length):
    """float32/float64 turn pairs by a complex multiply; values and gradients equal the real arithmetic."""
    angles = torch.randn(2, 5, length // 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 50
    complex_path = Rotation(angles, torch.float64)
    real_path = Rotation(angles, torch.float64)
    real_path.turn = None
    qkv = torch.randn(2, 5, 3 * 2 * 8, dtype=torch.float64, requires_grad=True)  # q: a strided view, as in attention
    q = qkv[..., :16].view(2, 5, 2, 8).transpose(1, 2)
    weights = torch.randn(2, 2, 5, 8, dtype=torch.float64)
    turned, expected = complex_path(q), real_path(q)
    torch.testing.assert_close(turned, expected, rtol=0, atol=1e-12)
    mine = torch.autograd.grad((turned * weights).sum(), qkv)[0]
    torch.testing.assert_close(mine, torch.autograd.grad((expected * weights).sum(), qkv)[0], rtol=0, atol=1e-12)
