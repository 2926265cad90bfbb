"""Rotary position embeddings (RoPE, Su et al. 2021, arXiv 2104.09864) and the SoAP variant.

Each variant is a pure function mapping positions to one angle per rotated pair; `ROPE_VARIANTS` is the one
lookup. Pairs are interleaved, (0,1), (2,3), ..., over the first `rope_length` dims of each head (GPT-J's
`rotary_dim` convention); the remaining dims pass unchanged. Angles come from `position_ids` alone: stateless.
"""

import math

import torch
from torch import nn

from .configuration_hf_embed import HfEmbedConfig


def rope_angles(position_ids: torch.Tensor, config: HfEmbedConfig) -> torch.Tensor:
    """Pair k at position p turns by p · θ^(−2k / rope_length).  (B, T) -> (B, T, rope_length/2)"""
    length = config.effective_rope_length
    exponents = torch.arange(0, length, 2, dtype=torch.float32, device=position_ids.device) / length
    inv_freq = 1.0 / config.rope_theta**exponents  # rounded as GPT-J and Llama round it, so angles match theirs
    return position_ids[..., None].float() * inv_freq


def soap_angles(position_ids: torch.Tensor, config: HfEmbedConfig) -> torch.Tensor:
    """Symmetrical Overlap Angular Positions: every pair turns by 2π · (p mod N) / N, N = sym_rot_num_angles."""
    n = config.sym_rot_num_angles
    angle = (position_ids % n).float() * (2 * math.pi / n)
    return angle[..., None].expand(*position_ids.shape, config.effective_rope_length // 2)


ROPE_VARIANTS = {"rope": rope_angles, "soap": soap_angles}


_COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}


class Rotation:
    """cos/sin of one forward pass, shared by every layer; calling it rotates q or k (B, H, T, hd).

    In float32 and float64 a pair is the complex number x₂ₖ + i·x₂ₖ₊₁ and the turn is one complex multiply by
    cos + i·sin: the formula below in a single kernel each way, about 5× faster than the real arithmetic (used
    for the other dtypes)."""

    def __init__(self, angles: torch.Tensor, dtype: torch.dtype):
        angles = angles[:, None]  # (B, 1, T, pairs): broadcast over heads
        self.cos = angles.cos().to(dtype)
        self.sin = angles.sin().to(dtype)
        self.length = 2 * angles.shape[-1]
        self.turn = torch.complex(self.cos, self.sin) if dtype in _COMPLEX else None  # e^{iθ}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rotated, rest = x[..., : self.length], x[..., self.length :]
        pairs = rotated.unflatten(-1, (-1, 2))  # (B, H, T, pairs, 2)
        if self.turn is not None and x.dtype in _COMPLEX:
            turned = torch.view_as_real(torch.view_as_complex(_complex_layout(pairs)) * self.turn)
        else:
            even, odd = pairs[..., 0], pairs[..., 1]
            turned = torch.stack((even * self.cos - odd * self.sin, even * self.sin + odd * self.cos), dim=-1)
        return torch.cat((turned.flatten(-2), rest), dim=-1) if rest.shape[-1] else turned.flatten(-2)


def _complex_layout(pairs: torch.Tensor) -> torch.Tensor:
    """`pairs` (…, 2) itself when `view_as_complex` can view it (even strides and offset), else a contiguous copy."""
    even = pairs.storage_offset() % 2 == 0 and all(stride % 2 == 0 for stride in pairs.stride()[:-1])
    return pairs if even else pairs.contiguous()


class NoRotation:
    """The absent rotation: q and k pass unchanged."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x


class RotaryEmbedding(nn.Module):
    """Turns `position_ids` into the `Rotation` every attention layer applies to its queries and keys."""

    def __init__(self, config: HfEmbedConfig):
        super().__init__()
        self.config = config
        self.angles = ROPE_VARIANTS[config.rope_variant]

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> Rotation:
        return Rotation(self.angles(position_ids, self.config), dtype)


class NoRotaryEmbedding(nn.Module):
    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> NoRotation:
        return NoRotation()
