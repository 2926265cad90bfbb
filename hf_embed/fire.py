"""FIRE: Functional Interpolation for Relative Position Encoding (Li et al. 2023, arXiv 2310.04418).

A learned bias on the attention logits. For query index i and key index j (sequence indices; i offset by the
cached length while decoding), with i − j clamped at 0 so masked entries stay finite:

    u = log(|c|·(i−j) + b) / max(log(|c|·max(i, L) + b), ε),   L = |L_multiplier · L_init|
    bias[h, i, j] = MLP(u)[h]

While i < L the normaliser is the constant log(|c|·L + b), so those rows depend on i − j alone: the MLP runs on
the k_len distinct distances once and the rows are gathered from that table (a Toeplitz bias; no
(T, T, width) intermediate). Only rows with i ≥ L evaluate the MLP per (i, j).
"""

import torch
from torch import nn

from .configuration_hf_embed import HfEmbedConfig

_EPS = 1e-6


def fire_mlp(config: HfEmbedConfig) -> nn.Sequential:
    """Linear(1, w), (fire_num_hidden_layers − 1) × (ReLU, Linear(w, w)), ReLU, Linear(w, n_head) [, ReLU]."""
    width = config.fire_mlp_width
    layers: list[nn.Module] = [nn.Linear(1, width)]
    for _ in range(config.fire_num_hidden_layers - 1):
        layers += [nn.ReLU(), nn.Linear(width, width)]
    layers += [nn.ReLU(), nn.Linear(width, config.n_head)]
    if config.fire_outermost_sigma:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class FireBias(nn.Module):
    """Adds the FIRE bias (H, q_len, k_len) to an additive attention mask (B, 1 or H, q_len, k_len)."""

    def __init__(self, config: HfEmbedConfig):
        super().__init__()
        self.mlp = fire_mlp(config)
        self.c = nn.Parameter(torch.full((), config.fire_init_c))
        self.L_multiplier = nn.Parameter(torch.ones(()))
        self.L_init = config.fire_init_L
        self.log_bias = config.fire_log_bias

    def bias(self, q_offset: int, q_len: int, k_len: int) -> torch.Tensor:
        """The bias for query rows q_offset .. q_offset+q_len−1 against keys 0 .. k_len−1.  -> (H, q_len, k_len)"""
        device = self.c.device
        c = self.c.abs()
        threshold = (self.L_multiplier * self.L_init).abs()
        queries = torch.arange(q_offset, q_offset + q_len, device=device)
        keys = torch.arange(k_len, device=device)
        n_toeplitz = int((queries < threshold).sum())  # rows i < L form a prefix

        rows = []
        if n_toeplitz:
            distances = torch.arange(k_len, device=device, dtype=c.dtype)
            normaliser = torch.log(c * threshold + self.log_bias).clamp_min(_EPS)
            table = self.mlp((torch.log(c * distances + self.log_bias) / normaliser)[:, None])  # (k_len, H)
            index = (queries[:n_toeplitz, None] - keys).clamp_min(0)
            rows.append(table[index])  # (n_toeplitz, k_len, H)
        if n_toeplitz < q_len:
            late = queries[n_toeplitz:]
            distances = (late[:, None] - keys).clamp_min(0).to(c.dtype)
            normaliser = torch.log(c * late.to(c.dtype) + self.log_bias).clamp_min(_EPS)[:, None]
            rows.append(self.mlp((torch.log(c * distances + self.log_bias) / normaliser)[..., None]))
        bias = rows[0] if len(rows) == 1 else torch.cat(rows, dim=0)
        return bias.permute(2, 0, 1)

    def forward(self, additive_mask: torch.Tensor, q_offset: int) -> torch.Tensor:
        q_len, k_len = additive_mask.shape[-2:]
        return additive_mask + self.bias(q_offset, q_len, k_len).to(additive_mask.dtype)


class NoBias(nn.Module):
    """The absent relative bias: the mask passes unchanged."""

    def forward(self, mask: torch.Tensor | None, q_offset: int) -> torch.Tensor | None:
        return mask


def additive_causal_mask(
    attention_mask: torch.Tensor | None, q_offset: int, q_len: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """Causal (and padding) mask as 0 / finfo(dtype).min, (1 or B, 1, q_len, k_len); never −inf.

    `attention_mask` is the usual 2-D (B, k_len) padding mask or None; a 4-D mask is taken as given.
    """
    if attention_mask is not None and attention_mask.dim() == 4:
        if attention_mask.dtype == torch.bool:
            return torch.zeros((), dtype=dtype, device=device).masked_fill(~attention_mask, torch.finfo(dtype).min)
        return attention_mask.to(dtype)
    k_len = q_offset + q_len
    queries = torch.arange(q_offset, k_len, device=device)
    allowed = (torch.arange(k_len, device=device) <= queries[:, None])[None, None]  # (1, 1, q, k)
    if attention_mask is not None and not bool(attention_mask.all()):
        allowed = allowed & attention_mask[:, None, None, -k_len:].bool()
    return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)
