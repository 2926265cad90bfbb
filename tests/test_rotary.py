"""Rotary position embeddings: the GPT-J oracle, the angle formulas of both variants, statelessness."""

import math

import pytest
import torch
from transformers.models.gptj.modeling_gptj import apply_rotary_pos_emb, create_sinusoidal_positions

from hf_embed import HfEmbedConfig
from hf_embed.configuration_hf_embed import ROPE_VARIANT_CHOICES
from hf_embed.rotary import ROPE_VARIANTS, NoRotaryEmbedding, RotaryEmbedding, Rotation

B, H, T, HD = 2, 3, 11, 16


def rope_config(**overrides) -> HfEmbedConfig:
    kwargs = dict(vocab_size=50, n_embd=H * HD, n_layer=1, n_head=H, block_size=64, use_rotary_embeddings=True)
    kwargs.update(overrides)
    return HfEmbedConfig(**kwargs)


def random_positions(generator: torch.Generator) -> torch.Tensor:
    """(B, T) positions: one row contiguous from 0, one row shuffled and far out (as a cache offset would be)."""
    return torch.stack([torch.arange(T), torch.randperm(T, generator=generator) + 1000])


def test_variant_table_matches_config_choices():
    assert set(ROPE_VARIANTS) == set(ROPE_VARIANT_CHOICES)


@pytest.mark.parametrize("rope_length", [None, 8, 2])
def test_rope_equals_gptj_rotary(rope_length):
    """Our interleaved rotation is GPT-J's with rotary_dim = rope_length (the tail of each head untouched)."""
    generator = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, B, H, T, HD, generator=generator)  # (B, H, T, hd)
    positions = random_positions(generator)
    config = rope_config(rope_length=rope_length)
    rotation = RotaryEmbedding(config)(positions, torch.float32)

    rotary_dim = rope_length or HD
    sincos = create_sinusoidal_positions(int(positions.max()) + 1, rotary_dim)[positions]  # (B, T, rotary_dim)
    sin, cos = sincos.split(rotary_dim // 2, dim=-1)

    def gptj(x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(1, 2)  # GPT-J's layout: (B, T, H, hd)
        turned = apply_rotary_pos_emb(x[..., :rotary_dim], sin, cos)
        return torch.cat([turned, x[..., rotary_dim:]], dim=-1).transpose(1, 2)

    torch.testing.assert_close(rotation(q), gptj(q), rtol=0, atol=1e-6)
    torch.testing.assert_close(rotation(k), gptj(k), rtol=0, atol=1e-6)
    torch.testing.assert_close(rotation(q)[..., rotary_dim:], q[..., rotary_dim:], rtol=0, atol=0)


@pytest.mark.parametrize("theta", [10000.0, 500.0])
@pytest.mark.parametrize("rope_length", [None, 6])
def test_rope_angles_follow_the_formula(theta, rope_length):
    """Pair k at position p turns by p · θ^(−2k / rope_length)."""
    positions = torch.tensor([[0, 1, 7, 300]])
    config = rope_config(rope_theta=theta, rope_length=rope_length)
    length = rope_length or HD
    k = torch.arange(length // 2, dtype=torch.float64)
    expected = positions[..., None].double() * theta ** (-2 * k / length)
    torch.testing.assert_close(ROPE_VARIANTS["rope"](positions, config).double(), expected, rtol=1e-6, atol=1e-6)


def test_rotation_formula_on_one_pair():
    """x'₂ₖ = x₂ₖ cos − x₂ₖ₊₁ sin, x'₂ₖ₊₁ = x₂ₖ sin + x₂ₖ₊₁ cos, for each pair k."""
    angles = torch.tensor([[[0.3, -1.2]]])  # (B=1, T=1, pairs=2)
    x = torch.tensor([1.0, 2.0, -3.0, 0.5, 7.0])[None, None, None]  # (1, 1, 1, 5): the last dim is not rotated
    out = Rotation(angles, torch.float32)(x).flatten()
    expected = []
    for pair, angle in enumerate((0.3, -1.2)):
        a, b = x.flatten()[2 * pair : 2 * pair + 2].tolist()
        expected += [a * math.cos(angle) - b * math.sin(angle), a * math.sin(angle) + b * math.cos(angle)]
    torch.testing.assert_close(out, torch.tensor([*expected, 7.0]), rtol=0, atol=1e-6)


@pytest.mark.parametrize("variant", ["rope", "soap"])
def test_scores_depend_only_on_relative_position(variant):
    """<R(p) q, R(p') k> depends on p − p' alone (mod N for SoAP), the property that makes RoPE relative."""
    generator = torch.Generator().manual_seed(1)
    q, k = torch.randn(2, 1, H, 1, HD, generator=generator)
    embedding = RotaryEmbedding(rope_config(rope_variant=variant, sym_rot_num_angles=24))

    def score(p: int, p_key: int) -> torch.Tensor:
        rotate_q = embedding(torch.tensor([[p]]), torch.float32)
        rotate_k = embedding(torch.tensor([[p_key]]), torch.float32)
        return (rotate_q(q) * rotate_k(k)).sum(-1)

    torch.testing.assert_close(score(5, 2), score(45, 42), rtol=0, atol=1e-5)
    torch.testing.assert_close(score(0, 0), (q * k).sum(-1), rtol=0, atol=1e-6)
    assert not torch.allclose(score(5, 2), score(5, 3), atol=1e-3)


def test_soap_turns_every_pair_by_one_angle_with_period_n():
    n = 12
    config = rope_config(rope_variant="soap", sym_rot_num_angles=n, rope_length=6)
    positions = torch.tensor([[0, 1, 5, 11, 12, 13, 12 * 7 + 5]])
    angles = ROPE_VARIANTS["soap"](positions, config)
    assert angles.shape == (1, 7, 3)
    expected = (2 * math.pi * (positions % n) / n).float()[..., None].expand(1, 7, 3)
    torch.testing.assert_close(angles, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(angles[0, 4], angles[0, 0], rtol=0, atol=0)  # p and p + N: the same angle
    torch.testing.assert_close(angles[0, 6], angles[0, 2], rtol=0, atol=0)


@pytest.mark.parametrize("variant", ["rope", "soap"])
def test_rotary_is_stateless(variant):
    """No buffer, no parameter, no call counter: the same positions give the same rotation every time."""
    embedding = RotaryEmbedding(rope_config(rope_variant=variant))
    assert not list(embedding.buffers()) and not list(embedding.parameters()) and not embedding.state_dict()
    x = torch.randn(B, H, T, HD)
    positions = torch.arange(T)[None]
    first = embedding(positions, torch.float32)(x)
    for _ in range(3):
        embedding(positions + 3, torch.float32)
    torch.testing.assert_close(embedding(positions, torch.float32)(x), first, rtol=0, atol=0)


def test_rotation_preserves_norms_and_position_zero_is_identity():
    embedding = RotaryEmbedding(rope_config(rope_length=10))
    x = torch.randn(B, H, T, HD, generator=torch.Generator().manual_seed(2))
    rotated = embedding(torch.arange(T)[None] + 17, torch.float32)(x)
    torch.testing.assert_close(rotated.norm(dim=-1), x.norm(dim=-1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(embedding(torch.zeros(1, T, dtype=torch.long), torch.float32)(x), x, rtol=0, atol=0)


def test_rotation_in_bfloat16_follows_float32():
    embedding = RotaryEmbedding(rope_config())
    x = torch.randn(B, H, T, HD, generator=torch.Generator().manual_seed(3))
    positions = torch.arange(T)[None] + 40
    low = embedding(positions, torch.bfloat16)(x.bfloat16())
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), embedding(positions, torch.float32)(x), rtol=2e-2, atol=5e-2)


def test_no_rotary_embedding_is_the_identity():
    x = torch.randn(B, H, T, HD)
    assert NoRotaryEmbedding()(torch.arange(T)[None], torch.float32)(x) is x
