"""The token table `wte`, its initialisations (`EMBEDDING_INITS`) and the learned position table `wpe`.

Every initialisation is a pure function `(num_rows, dim, config, generator) -> Tensor` of shape (num_rows, dim),
drawn from `generator` (the global torch RNG when None), so `torch.manual_seed` makes it deterministic.
`dim` is the table's real width: `n_embd_wte` when the table is factorized, else `n_embd`.

`python -m hf_embed.embeddings` prints the parameter count of the embedding stack for GPT-2's V and d at several
widths r (`parameter_table`).
"""

import math

import torch
from torch import nn

from .configuration_hf_embed import HfEmbedConfig
from .numpy_io import load_npy

_NORM_RANGE_ROUNDS = 100  # vectorised resampling rounds before gaussian_norm_range gives up
_ENUMERATE_LIMIT = 1 << 22  # up to this many hypercube corners, unique_hypercube samples without replacement


class TokenEmbedding(nn.Embedding):
    """The word token table `wte`, (vocab_size, n_embd_wte or n_embd); initialised by `init_variant`."""


class PositionEmbedding(nn.Embedding):
    """Learned absolute positions `wpe`, (block_size, n_embd); N(embedding_mean_init, embedding_std_init)."""


def _gaussian(rows: int, dim: int, config: HfEmbedConfig, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(rows, dim, generator=generator) * config.embedding_std_init + config.embedding_mean_init


def _onehot(rows: int, dim: int, config: HfEmbedConfig, generator: torch.Generator | None) -> torch.Tensor:
    table = torch.zeros(rows, dim)
    table[torch.arange(rows), torch.arange(rows)] = config.init_scale
    return table


def _bits(values: torch.Tensor, dim: int) -> torch.Tensor:
    """Bit k of each value in column k (least significant first), as 0/1 floats; columns past bit 62 are 0."""
    width = min(dim, 62)
    bits = (values[:, None] >> torch.arange(width)) & 1
    return torch.cat([bits.float(), torch.zeros(len(values), dim - width)], dim=1)


def _hypercube(rows: int, dim: int, config: HfEmbedConfig, generator: torch.Generator | None) -> torch.Tensor:
    return _bits(torch.arange(rows), dim) * config.init_scale


def _rand_hypercube(rows: int, dim: int, config: HfEmbedConfig, generator: torch.Generator | None) -> torch.Tensor:
    signs = torch.randint(0, 2, (rows, dim), generator=generator).float() * 2 - 1
    return signs * (config.init_scale / math.sqrt(dim))


def _unique_hypercube(rows: int, dim: int, config: HfEmbedConfig, generator: torch.Generator | None) -> torch.Tensor:
    """Random ±1 rows, no two equal or antipodal: distinct corners with first coordinate +1, then random signs."""
    if dim == 1 or 2 ** (dim - 1) <= _ENUMERATE_LIMIT:
        corners = torch.randperm(2 ** (dim - 1), generator=generator)[:rows]
        canonical = torch.cat([torch.ones(rows, 1), _bits(corners, dim - 1)], dim=1) * 2 - 1
    else:  # huge space: rejection sampling converges in a few rounds
        canonical = torch.randint(0, 2, (rows, dim), generator=generator).float() * 2 - 1
        canonical[:, 0] = 1
        while True:
            _, inverse = torch.unique(canonical, dim=0, return_inverse=True)
            first = torch.full((rows,), rows, dtype=torch.long).scatter_reduce(
                0, inverse, torch.arange(rows), reduce="amin"
            )
            repeated = first[inverse] != torch.arange(rows)
            if not repeated.any():
                break
            fresh = torch.randint(0, 2, (int(repeated.sum()), dim - 1), generator=generator).float() * 2 - 1
            canonical[repeated, 1:] = fresh
    signs = torch.randint(0, 2, (rows, 1), generator=generator).float() * 2 - 1
    return canonical * signs * (config.init_scale / math.sqrt(dim))


def _angle_hypersphere(rows: int, dim: int, config: HfEmbedConfig, generator: torch.Generator | None) -> torch.Tensor:
    table = torch.cos(torch.rand(rows, dim, generator=generator) * (2 * math.pi))
    return table / table.norm(dim=1, keepdim=True).clamp_min(1e-12) * config.init_radius


def _norms_outside(table: torch.Tensor, low: float, high: float) -> torch.Tensor:
    norms = table.norm(dim=1)
    return (norms < low) | (norms > high)


def _gaussian_norm_range(rows: int, dim: int, config: HfEmbedConfig, generator: torch.Generator | None) -> torch.Tensor:
    """Gaussian rows; those with a norm outside [gaussian_min_norm, gaussian_max_norm] are redrawn, all at once."""
    low, high = config.gaussian_min_norm, config.gaussian_max_norm
    table = _gaussian(rows, dim, config, generator)
    for _ in range(_NORM_RANGE_ROUNDS):
        outside = _norms_outside(table, low, high)
        if not outside.any():
            return table
        table[outside] = _gaussian(int(outside.sum()), dim, config, generator)
    outside = _norms_outside(table, low, high)
    if outside.any():
        raise ValueError(
            f"init_variant='gaussian_norm_range': {int(outside.sum())} of {rows} rows still have a norm outside "
            f"[gaussian_min_norm={low}, gaussian_max_norm={high}] after {_NORM_RANGE_ROUNDS} rounds of resampling "
            f"from N({config.embedding_mean_init}, {config.embedding_std_init}) in {dim} dimensions (typical norm "
            f"{config.embedding_std_init * math.sqrt(dim):.4g}); widen the range or change embedding_std_init"
        )
    return table


def _numpy_import(rows: int, dim: int, config: HfEmbedConfig, generator: torch.Generator | None) -> torch.Tensor:
    return torch.from_numpy(load_npy(config.init_wte_npy, (rows, dim), "init_wte_npy")) * config.init_scale


EMBEDDING_INITS = {
    "gaussian": _gaussian,
    "onehot": _onehot,
    "hypercube": _hypercube,
    "numpy_import": _numpy_import,
    "rand_hypercube": _rand_hypercube,
    "angle_hypersphere": _angle_hypersphere,
    "unique_hypercube": _unique_hypercube,
    "gaussian_norm_range": _gaussian_norm_range,
}


def initial_token_table(config: HfEmbedConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """The (vocab_size, token_table_dim) table that `config.init_variant` prescribes."""
    return EMBEDDING_INITS[config.init_variant](config.vocab_size, config.token_table_dim, config, generator)


def embedding_parameter_count(config: HfEmbedConfig) -> int:
    """Parameters of the token embedding stack: the table, the scale adapters, and the LM head when it is untied.

    Tied head and tied adapters count once: V·r + d·r for a factorized, fully tied stack; V·d unfactorized.
    """
    dim = config.token_table_dim
    count = config.vocab_size * dim
    if config.n_embd_wte is not None:
        count += config.n_embd * dim * (1 if config.n_embd_wte_scale_tying else 2)
    if not config.wte_weight_tying:
        count += config.vocab_size * dim
    return count


def parameter_table(
    vocab_size: int = 50257, n_embd: int = 768, ranks: tuple[int | None, ...] = (None, 256, 128, 64)
) -> str:
    """A markdown table of `embedding_parameter_count` for each table width r, with tied and untied scale adapters.

    The LM head is tied to the table throughout (the default), so the stack is V·r + d·r (tied adapters) or
    V·r + 2·d·r (untied); r = none is the unfactorized V·d table.
    """
    full = embedding_parameter_count(HfEmbedConfig(vocab_size=vocab_size, n_embd=n_embd))
    lines = [
        f"Token embedding stack, V={vocab_size}, d={n_embd}, LM head tied to the table:",
        "",
        "| n_embd_wte (r) | adapters tied | adapters untied | tied, share of unfactorized |",
        "|---:|---:|---:|---:|",
    ]
    for rank in ranks:
        if rank is None:
            lines.append(f"| none | {full:,} | – | 100.0% |")
            continue
        tied, untied = (
            embedding_parameter_count(
                HfEmbedConfig(vocab_size=vocab_size, n_embd=n_embd, n_embd_wte=rank, n_embd_wte_scale_tying=tying)
            )
            for tying in (True, False)
        )
        lines.append(f"| {rank} | {tied:,} | {untied:,} | {100 * tied / full:.1f}% |")
    return "\n".join(lines)
