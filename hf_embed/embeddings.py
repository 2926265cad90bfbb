"""The token table `wte`, its initialisations (`EMBEDDING_INITS`) and the learned position table `wpe`.

Every initialisation is a pure function `(num_rows, dim, config, generator) -> Tensor` of shape (num_rows, dim),
drawn from `generator` (the global torch RNG when None), so `torch.manual_seed` makes it deterministic.
`dim` is the table's real width: `n_embd_wte` when the table is factorized, else `n_embd`.
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


def _gaussian_norm_range(rows: int, dim: int, config: HfEmbedConfig, generator: torch.Generator | None) -> torch.Tensor:
    low, high = config.gaussian_min_norm, config.gaussian_max_norm
    table = _gaussian(rows, dim, config, generator)
    for _ in range(_NORM_RANGE_ROUNDS):
        norms = table.norm(dim=1)
        outside = (norms < low) | (norms > high)
        if not outside.any():
            return table
        table[outside] = _gaussian(int(outside.sum()), dim, config, generator)
    raise ValueError(
        f"init_variant='gaussian_norm_range': {int(outside.sum())} of {rows} rows still have a norm outside "
        f"[gaussian_min_norm={low}, gaussian_max_norm={high}] after {_NORM_RANGE_ROUNDS} rounds of resampling from "
        f"N({config.embedding_mean_init}, {config.embedding_std_init}) in {dim} dimensions (typical norm "
        f"{config.embedding_std_init * math.sqrt(dim):.4g}); widen the range or change embedding_std_init"
    )


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
