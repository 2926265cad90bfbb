"""FIRE: Functional Interpolation for Relative Position Encoding (Li et al. 2023, arXiv 2310.04418).

A learned bias on the attention logits. For query index i and key index j (sequence indices; i offset by the
cached length while decoding), with i − j clamped at 0 so masked entries stay finite:

    u = log(|c|·(i−j) + b) / max(log(|c|·max(i, L) + b), ε),   L = |L_multiplier · L_init|
    bias[h, i, j] = MLP(u)[h]

While i < L the normaliser is the constant log(|c|·L + b), so those rows depend on i − j alone: the MLP runs on
the k_len distinct distances once and the rows are windows of that table (a Toeplitz bias; no
(T, T, width) intermediate). Only rows with i ≥ L evaluate the MLP per (i, j), a chunk of rows at a time, and
under autograd each chunk is recomputed in backward rather than kept.

`sdpa_attention_with_learned_mask` is the SDPA attention path for such a mask: PyTorch's CPU SDPA falls back to
its math kernel, which keeps (B, H, T, S) probabilities per layer, when the mask needs a gradient.
"""

import math
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from .configuration_hf_embed import HfEmbedConfig

_EPS = 1e-6
_LATE_CHUNK = 1 << 22  # elements of the (rows, k_len, width) MLP intermediate evaluated at once for rows i ≥ L
_QUERY_BLOCKS = 4  # blocks of query rows in the learned-mask attention: early blocks skip the keys they cannot see
_BLOCK_SCORES = 1 << 22  # at most this many (batch, head, query, key) scores in one block
_RECOMPUTE = object()  # what autograd keeps in place of a FIRE mask it will recompute


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
        c = self.c.abs()
        threshold = (self.L_multiplier * self.L_init).abs()
        n_toeplitz = min(max(math.ceil(threshold.item()) - q_offset, 0), q_len)  # rows i < L form a prefix

        rows = []
        if n_toeplitz:
            rows.append(self._toeplitz_rows(c, threshold, q_offset, n_toeplitz, k_len))
        if n_toeplitz < q_len:
            rows.append(self._late_rows(c, q_offset + n_toeplitz, q_offset + q_len, k_len))
        return rows[0] if len(rows) == 1 else torch.cat(rows, dim=1)

    def _mlp(self, u: torch.Tensor) -> torch.Tensor:
        """MLP(u) for every entry of u, head first: (…) -> (H, …). The layers run on (features, entries), so the
        bias comes out in its (H, q, k) layout with no transposing copy."""
        x = u.reshape(1, -1).to(self.mlp[0].weight.dtype)
        for layer in self.mlp:
            x = torch.addmm(layer.bias[:, None], layer.weight, x) if isinstance(layer, nn.Linear) else layer(x)
        return x.view(-1, *u.shape)

    def _toeplitz_rows(
        self, c: torch.Tensor, threshold: torch.Tensor, first: int, count: int, k_len: int
    ) -> torch.Tensor:
        """Rows first .. first+count−1, all < L: bias[h, i, j] = table[h, max(i − j, 0)].  -> (H, count, k_len)"""
        distances = torch.arange(k_len - 1, -1, -1, device=c.device, dtype=c.dtype)  # k_len − 1 .. 0
        normaliser = torch.log(c * threshold + self.log_bias).clamp_min(_EPS)
        table = self._mlp(torch.log(c * distances + self.log_bias) / normaliser)  # (H, k_len), distance descending
        # Row i is this table from distance i down to 0, then distance 0 again for the keys j > i (masked): the
        # window of length k_len that starts at k_len − 1 − i in the table padded with the first row's j > i keys.
        padding = k_len - 1 - first
        padded = torch.cat([table, table[:, -1:].expand(-1, padding)], dim=-1) if padding else table
        windows = padded[:, k_len - first - count :].unfold(-1, k_len, 1)  # (H, count, k_len), last row first; a view
        return windows.flip(1) if count > 1 else windows  # rows in order, one copy

    def _late_rows(self, c: torch.Tensor, first: int, stop: int, k_len: int) -> torch.Tensor:
        """Rows first .. stop−1, all ≥ L: the MLP per (i, j), in chunks; under autograd each chunk's (rows, k_len,
        width) intermediates are recomputed in backward instead of kept.  -> (H, stop − first, k_len)"""
        chunk_rows = max(1, _LATE_CHUNK // (k_len * self.mlp[0].out_features))
        chunks = []
        for start in range(first, stop, chunk_rows):
            end = min(start + chunk_rows, stop)
            if torch.is_grad_enabled():
                chunks.append(checkpoint(self._late_chunk, c, start, end, k_len, use_reentrant=False))
            else:
                chunks.append(self._late_chunk(c, start, end, k_len))
        return chunks[0] if len(chunks) == 1 else torch.cat(chunks, dim=1)

    def _late_chunk(self, c: torch.Tensor, start: int, stop: int, k_len: int) -> torch.Tensor:
        """Rows start .. stop−1; keys from `stop` on come after every row: distance 0, one value per row."""
        late = torch.arange(start, stop, device=c.device)
        seen = min(stop, k_len)
        distances = (late[:, None] - torch.arange(seen, device=c.device)).clamp_min(0).to(c.dtype)  # (rows, seen)
        normaliser = torch.log(c * late.to(c.dtype) + self.log_bias).clamp_min(_EPS)[:, None]
        rows = self._mlp(torch.log(c * distances + self.log_bias) / normaliser)  # (H, rows, seen)
        if seen < k_len:
            future = self._mlp(torch.log(c * distances.new_zeros(()) + self.log_bias) / normaliser)  # (H, rows, 1)
            rows = torch.cat([rows, future.expand(-1, -1, k_len - seen)], dim=-1)
        return rows

    def forward(self, additive_mask: torch.Tensor, q_offset: int) -> torch.Tensor:
        q_len, k_len = additive_mask.shape[-2:]
        return additive_mask + self.bias(q_offset, q_len, k_len).to(additive_mask.dtype)

    def recompute_when_saved(
        self, mask: torch.Tensor, additive_mask: torch.Tensor, q_offset: int
    ) -> AbstractContextManager:
        """A context in which autograd keeps, instead of `mask` (this module's output for `additive_mask`), a note to
        recompute it in backward: a layer's (…, H, T, S) mask is then freed after its forward pass. The graph from
        the mask back to the parameters keeps no tensor of that size (add, flip, unfold and cat save none)."""
        if not torch.is_grad_enabled():
            return nullcontext()
        identity = (mask.data_ptr(), mask.shape, mask.dtype)  # not the tensor: holding it would keep it alive
        q_len, k_len = mask.shape[-2:]

        def pack(tensor: torch.Tensor) -> object:
            return _RECOMPUTE if (tensor.data_ptr(), tensor.shape, tensor.dtype) == identity else tensor

        def unpack(packed: object) -> torch.Tensor:
            if packed is not _RECOMPUTE:
                return packed
            with torch.no_grad():
                return additive_mask + self.bias(q_offset, q_len, k_len).to(additive_mask.dtype)

        return torch.autograd.graph.saved_tensors_hooks(pack, unpack)


class NoBias(nn.Module):
    """The absent relative bias: the mask passes unchanged."""

    def forward(self, mask: torch.Tensor | None, q_offset: int) -> torch.Tensor | None:
        return mask

    def recompute_when_saved(self, mask: torch.Tensor | None, *args) -> AbstractContextManager:
        return nullcontext()


def _query_blocks(mask: torch.Tensor, batch_heads: int) -> list[tuple[int, int, int]]:
    """(start, stop, keys) for each block of query rows: block rows attend to keys[:keys]. A causal mask hides the
    keys after a block's last row from all its rows; `keys` drops them where the mask shows it does, and no row of
    the block is masked throughout (such a row averages over every key, as the eager path does)."""
    q_len, k_len = mask.shape[-2:]
    rows = max(1, min(-(-q_len // _QUERY_BLOCKS), _BLOCK_SCORES // (batch_heads * k_len)))
    shown = mask > torch.finfo(mask.dtype).min / 2
    blind_rows = ~shown.any(-1)  # (…, q_len)
    blocks = []
    for start in range(0, q_len, rows):
        stop = min(start + rows, q_len)
        keys = k_len - q_len + stop
        if keys < k_len and bool(shown[..., start:stop, keys:].any() or blind_rows[..., start:stop].any()):
            keys = k_len
        blocks.append((start, stop, keys))
    return blocks


class _LearnedMaskAttention(torch.autograd.Function):
    """softmax(q kᵀ · scaling + mask) v with the gradient of a learned float mask, one block of query rows at a time.

    Forward: PyTorch's fused SDPA kernel per block. Backward: each block's probabilities are recomputed, as in
    flash-attention's backward (Dao et al. 2022, arXiv 2205.14135, Algorithm 4), so no (B, H, T, S) tensor is kept
    between the passes. Rows whose every key is masked (left padding) average over the block's keys only.
    q, k, v: (B, H, T or S, hd); mask: (1 or B, 1 or H, T, S) -> (B, H, T, hd)
    """

    @staticmethod
    def forward(ctx, query, key, value, mask, scaling):
        batch, heads, q_len, head_dim = query.shape
        blocks = _query_blocks(mask, batch * heads)
        output = query.new_empty(batch, q_len, heads, head_dim).transpose(1, 2)  # (B, T, H, hd) in memory
        for start, stop, keys in blocks:
            output[:, :, start:stop] = F.scaled_dot_product_attention(
                query[:, :, start:stop],
                key[:, :, :keys],
                value[:, :, :keys],
                attn_mask=mask[..., start:stop, :keys],
                scale=scaling,
            )
        ctx.save_for_backward(query, key, value, mask, output)
        ctx.scaling, ctx.blocks = scaling, blocks
        return output

    @staticmethod
    def backward(ctx, grad_output):
        query, key, value, mask, output = ctx.saved_tensors
        batch, heads, q_len, head_dim = query.shape
        flat = (batch * heads, -1, head_dim)
        q = (query * ctx.scaling).reshape(flat)  # (B·H, T, hd), the scaling folded in once
        k, v, grad = key.reshape(flat), value.reshape(flat), grad_output.reshape(flat)
        grad_q, grad_k, grad_v = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
        grad_mask = torch.empty_like(mask) if ctx.needs_input_grad[3] else None
        broadcast = [dim for dim in (0, 1) if mask.shape[dim] == 1 and query.shape[dim] != 1]
        row_dot = (grad_output * output).sum(-1).reshape(batch * heads, q_len, 1)  # Σ_j p_ij dp_ij
        for start, stop, keys in ctx.blocks:
            rows = slice(start, stop)
            scores = torch.bmm(q[:, rows], k[:, :keys].transpose(1, 2))  # (B·H, rows, keys)
            scores.view(batch, heads, stop - start, keys).add_(mask[..., rows, :keys])
            probs = torch.softmax(scores, dim=-1, dtype=torch.promote_types(q.dtype, torch.float32)).to(q.dtype)
            grad_v[:, :keys].baddbmm_(probs.transpose(1, 2), grad[:, rows])
            grad_scores = torch.bmm(grad[:, rows], v[:, :keys].transpose(1, 2)).sub_(row_dot[:, rows]).mul_(probs)
            grad_q[:, rows].baddbmm_(grad_scores, k[:, :keys], beta=0, alpha=ctx.scaling)
            grad_k[:, :keys].baddbmm_(grad_scores.transpose(1, 2), q[:, rows])
            if grad_mask is not None:
                grad_scores = grad_scores.view(batch, heads, stop - start, keys)
                grad_mask[..., rows, :keys] = grad_scores.sum(broadcast, keepdim=True) if broadcast else grad_scores
                grad_mask[..., rows, keys:] = 0  # the skipped keys: masked, so no gradient
        return grad_q.view(query.shape), grad_k.view(key.shape), grad_v.view(value.shape), grad_mask, None


def sdpa_attention_with_learned_mask(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention, except for a float mask that needs a gradient (FIRE) on CPU without dropout:
    PyTorch would fall back to its math kernel there, so `_LearnedMaskAttention` runs instead.  -> (B, T, H, hd)"""
    learned = attention_mask is not None and attention_mask.requires_grad and torch.is_grad_enabled()
    if not learned or dropout > 0 or query.device.type != "cpu" or key.shape[1] != query.shape[1]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    return _LearnedMaskAttention.apply(query, key, value, attention_mask, scaling).transpose(1, 2), None


def additive_causal_mask(
    attention_mask: torch.Tensor | None,
    q_offset: int,
    q_len: int,
    dtype: torch.dtype,
    device: torch.device,
    k_len: int | None = None,
) -> torch.Tensor:
    """Causal (and padding) mask as 0 / finfo(dtype).min, (1 or B, 1, q_len, k_len); never −inf.

    `attention_mask` is the usual 2-D (B, keys so far) padding mask or None; a 4-D mask is taken as given.
    `k_len` defaults to q_offset + q_len; a static cache passes its full length, and its not yet written slots
    (keys after the last query) are masked as the future.
    """
    if attention_mask is not None and attention_mask.dim() == 4:
        if attention_mask.dtype == torch.bool:
            return torch.zeros((), dtype=dtype, device=device).masked_fill(~attention_mask, torch.finfo(dtype).min)
        return attention_mask.to(dtype)
    k_len = q_offset + q_len if k_len is None else k_len
    queries = torch.arange(q_offset, q_offset + q_len, device=device)
    allowed = (torch.arange(k_len, device=device) <= queries[:, None])[None, None]  # (1, 1, q, k)
    if attention_mask is not None and not bool(attention_mask.all()):
        padding = attention_mask[:, -k_len:].bool()
        padding = F.pad(padding, (0, k_len - padding.shape[-1]), value=True)  # future slots: masked as the future
        allowed = allowed & padding[:, None, None, :]
    return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)
