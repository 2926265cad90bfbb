"""embeddings.py: the eight token-table initialisations (SPEC §4), their config-time "needs" checks, and the
parameter accounting of the embedding stack (with its `python -m hf_embed.parameters` table)."""

import math
import os
import re
import runpy
import tempfile
from pathlib import Path

os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="hf_embed_test_home_")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from hf_embed import HfEmbedConfig, HfEmbedForCausalLM, HfEmbedModel  # noqa: E402
from hf_embed.configuration_hf_embed import INIT_VARIANT_CHOICES  # noqa: E402
from hf_embed.embeddings import (  # noqa: E402
    EMBEDDING_INITS,
    embedding_parameter_count,
    initial_token_table,
    parameter_table,
)

V, D = 40, 64
R = 48  # a factorized width (< D) that still admits every variant: onehot needs dim >= V
RANDOM_VARIANTS = ["gaussian", "rand_hypercube", "unique_hypercube", "angle_hypersphere", "gaussian_norm_range"]


def make_config(dim: int, vocab_size: int = V, **overrides) -> HfEmbedConfig:
    """A tiny config whose token table is (vocab_size, dim): factorized unless dim == D."""
    return HfEmbedConfig(
        vocab_size=vocab_size,
        n_embd=D,
        n_embd_wte=None if dim == D else dim,
        n_layer=2,
        n_head=2,
        block_size=16,
        **overrides,
    )


def variant_overrides(variant: str, dim: int, folder: Path) -> dict:
    """Config values that make each variant's defining property specific (scales other than the defaults)."""
    typical_norm = 0.02 * math.sqrt(dim)
    overrides = {
        "gaussian": {"embedding_mean_init": 0.3, "embedding_std_init": 0.05, "init_scale": 7.0},  # scale ignored
        "onehot": {"init_scale": 0.5},
        "hypercube": {"init_scale": 0.25},
        "rand_hypercube": {"init_scale": 3.0},
        "unique_hypercube": {"init_scale": 3.0},
        "angle_hypersphere": {"init_radius": 2.5, "init_scale": 7.0},  # init_scale must be ignored
        # a band of ±10% around the typical norm: about a third of the rows must be redrawn
        "gaussian_norm_range": {
            "gaussian_min_norm": 0.9 * typical_norm,
            "gaussian_max_norm": 1.1 * typical_norm,
            "init_scale": 7.0,  # ignored: a scaled draw would have no row in the band
        },
        "numpy_import": {"init_scale": 0.5, "init_wte_npy": str(folder / f"wte_{dim}.npy")},
    }[variant]
    if variant == "numpy_import":
        np.save(overrides["init_wte_npy"], imported_array(dim))
    return {"init_variant": variant, **overrides}


def imported_array(dim: int) -> np.ndarray:
    return np.random.default_rng(dim).standard_normal((V, dim)).astype(np.float32)


def row_norms(table: torch.Tensor) -> torch.Tensor:
    return table.double().norm(dim=1)


# ---------------------------------------------------------------- the defining property of each variant


def check_gaussian(table, config):
    values = table.double()
    assert abs(values.mean().item() - 0.3) < 5 * 0.05 / math.sqrt(values.numel())
    assert values.std().item() == pytest.approx(0.05, rel=0.1)


def check_onehot(table, config):
    torch.testing.assert_close(table, 0.5 * torch.eye(*table.shape), rtol=0, atol=0)


def check_hypercube(table, config):
    rows, dim = table.shape
    bits = (np.arange(rows)[:, None] >> np.arange(dim)[None, :]) & 1  # bit k of i, least significant first
    np.testing.assert_array_equal(table.numpy(), (bits * np.float32(0.25)).astype(np.float32))


def check_rand_hypercube(table, config):
    entry = 3.0 / math.sqrt(table.shape[1])
    torch.testing.assert_close(table.abs(), torch.full_like(table, entry))
    torch.testing.assert_close(row_norms(table), torch.full((table.shape[0],), 3.0, dtype=torch.float64))
    assert (table > 0).any() and (table < 0).any()


def check_unique_hypercube(table, config):
    check_rand_hypercube(table, config)
    signs = torch.sign(table).double()
    gram = signs @ signs.T  # dim for equal rows, -dim for antipodal ones
    off_diagonal = gram[~torch.eye(len(gram), dtype=torch.bool)]
    assert off_diagonal.abs().max() < table.shape[1]


def check_angle_hypersphere(table, config):
    torch.testing.assert_close(row_norms(table), torch.full((table.shape[0],), 2.5, dtype=torch.float64))
    assert torch.unique(table, dim=0).shape[0] == table.shape[0]


def check_gaussian_norm_range(table, config):
    norms = row_norms(table)
    assert (norms >= config.gaussian_min_norm - 1e-6).all() and (norms <= config.gaussian_max_norm + 1e-6).all()


def check_numpy_import(table, config):
    np.testing.assert_array_equal(table.numpy(), imported_array(table.shape[1]) * np.float32(0.5))


PROPERTIES = {
    "gaussian": check_gaussian,
    "onehot": check_onehot,
    "hypercube": check_hypercube,
    "rand_hypercube": check_rand_hypercube,
    "unique_hypercube": check_unique_hypercube,
    "angle_hypersphere": check_angle_hypersphere,
    "gaussian_norm_range": check_gaussian_norm_range,
    "numpy_import": check_numpy_import,
}


def test_every_config_choice_has_one_init_function():
    assert set(EMBEDDING_INITS) == set(INIT_VARIANT_CHOICES) == set(PROPERTIES)


@pytest.mark.parametrize("dim", [R, D], ids=["factorized", "full"])
@pytest.mark.parametrize("variant", INIT_VARIANT_CHOICES)
def test_model_table_has_the_variants_shape_and_property(variant, dim, tmp_path):
    """Built through `_init_weights`: the table gets the variant on its real shape (V, r) or (V, d)."""
    config = make_config(dim, **variant_overrides(variant, dim, tmp_path))
    torch.manual_seed(0)
    model = HfEmbedForCausalLM(config)
    table = model.transformer.wte.weight.detach()
    assert table.shape == (V, dim)
    PROPERTIES[variant](table, config)
    assert model.lm_head.weight is model.transformer.wte.weight  # the tie did not overwrite the table


@pytest.mark.parametrize("variant", INIT_VARIANT_CHOICES)
def test_model_table_is_deterministic_under_manual_seed(variant, tmp_path):
    config = make_config(R, **variant_overrides(variant, R, tmp_path))
    tables = []
    for seed in (3, 3, 4):
        torch.manual_seed(seed)
        tables.append(HfEmbedModel(config).wte.weight.detach())
    assert torch.equal(tables[0], tables[1])
    assert torch.equal(tables[0], tables[2]) == (variant not in RANDOM_VARIANTS)


@pytest.mark.parametrize("variant", INIT_VARIANT_CHOICES)
def test_init_functions_are_pure(variant, tmp_path):
    """Same generator seed -> same table; the global RNG is not touched when a generator is given."""
    config = make_config(R, **variant_overrides(variant, R, tmp_path))
    function = EMBEDDING_INITS[variant]
    global_state = torch.get_rng_state()
    first = function(V, R, config, torch.Generator().manual_seed(5))
    second = function(V, R, config, torch.Generator().manual_seed(5))
    assert torch.equal(torch.get_rng_state(), global_state)
    assert first.shape == (V, R) and first.dtype == torch.float32
    assert torch.equal(first, second)
    PROPERTIES[variant](first, config)
    torch.manual_seed(9)
    from_global = initial_token_table(config)
    torch.manual_seed(9)
    assert torch.equal(from_global, initial_token_table(config))


def test_gaussian_is_exactly_the_scaled_normal_draw(tmp_path):
    config = make_config(R, **variant_overrides("gaussian", R, tmp_path))
    table = EMBEDDING_INITS["gaussian"](V, R, config, torch.Generator().manual_seed(1))
    expected = torch.randn(V, R, generator=torch.Generator().manual_seed(1)) * 0.05 + 0.3
    torch.testing.assert_close(table, expected, rtol=0, atol=0)


def test_gaussian_norm_range_had_to_resample(tmp_path):
    """The band is narrow enough that a plain draw has rows outside it: the variant really redraws them."""
    config = make_config(R, **variant_overrides("gaussian_norm_range", R, tmp_path))
    plain = row_norms(EMBEDDING_INITS["gaussian"](V, R, config, torch.Generator().manual_seed(2)))
    assert ((plain < config.gaussian_min_norm) | (plain > config.gaussian_max_norm)).sum() >= V // 10
    table = EMBEDDING_INITS["gaussian_norm_range"](V, R, config, torch.Generator().manual_seed(2))
    check_gaussian_norm_range(table, config)


def test_gaussian_norm_range_impossible_band_raises_instead_of_hanging():
    config = make_config(R, init_variant="gaussian_norm_range", gaussian_min_norm=10.0, gaussian_max_norm=11.0)
    with pytest.raises(ValueError, match=r"gaussian_norm_range.*40 of 40 rows.*gaussian_min_norm=10.0.*100 rounds"):
        EMBEDDING_INITS["gaussian_norm_range"](V, R, config, None)
    with pytest.raises(ValueError, match="gaussian_min_norm=10.0"):
        HfEmbedModel(config)


def test_gaussian_norm_range_infinite_upper_bound_is_the_default():
    config = make_config(R, init_variant="gaussian_norm_range", gaussian_min_norm=0.1)
    assert config.gaussian_max_norm == math.inf
    assert (row_norms(initial_token_table(config)) >= 0.1).all()


@pytest.mark.parametrize(("rows", "dim"), [(32, 6), (40, 7), (2, 2), (1, 1)])
def test_unique_hypercube_when_the_corners_are_nearly_all_used(rows, dim):
    """Small dims enumerate corners: up to V = 2**(dim-1) rows, none equal or antipodal."""
    config = make_config(dim, vocab_size=rows, init_variant="unique_hypercube", init_scale=3.0)
    table = EMBEDDING_INITS["unique_hypercube"](rows, dim, config, torch.Generator().manual_seed(0))
    assert table.shape == (rows, dim)
    if rows > 1:
        check_unique_hypercube(table, config)


def test_hypercube_at_the_exact_limit():
    config = make_config(5, vocab_size=32, init_variant="hypercube", init_scale=0.25)
    table = initial_token_table(config)
    check_hypercube(table, config)
    assert torch.unique(table, dim=0).shape[0] == 32  # all 2**5 corners, each once


# ---------------------------------------------------------------- "needs": config-time errors naming both numbers


@pytest.mark.parametrize(
    ("variant", "vocab_size", "dim", "numbers"),
    [
        ("onehot", 40, 8, ["8", "40"]),
        ("onehot", 100, D, ["64", "100"]),
        ("hypercube", 40, 5, ["32", "40"]),
        ("hypercube", 200, 7, ["128", "200"]),
        ("unique_hypercube", 40, 6, ["32", "40"]),
        ("unique_hypercube", 33, 6, ["32", "33"]),
    ],
)
def test_unmet_needs_are_config_errors_naming_both_numbers(variant, vocab_size, dim, numbers):
    with pytest.raises(ValueError) as info:
        make_config(dim, vocab_size=vocab_size, init_variant=variant)
    message = str(info.value)
    assert f"init_variant={variant!r}" in message
    for number in numbers:
        assert re.search(rf"\b{number}\b", message), f"{number} not in {message!r}"
    assert ("n_embd_wte" if dim != D else "n_embd") in message


@pytest.mark.parametrize(
    ("variant", "vocab_size", "dim"),
    [("onehot", 40, 40), ("onehot", 64, D), ("hypercube", 32, 5), ("unique_hypercube", 32, 6)],
)
def test_needs_met_exactly_is_accepted(variant, vocab_size, dim):
    config = make_config(dim, vocab_size=vocab_size, init_variant=variant)
    assert initial_token_table(config).shape == (vocab_size, dim)


def test_gaussian_norm_range_band_must_be_ordered():
    with pytest.raises(ValueError, match="gaussian_max_norm=0.1.*gaussian_min_norm \\(0.5\\)"):
        make_config(R, init_variant="gaussian_norm_range", gaussian_min_norm=0.5, gaussian_max_norm=0.1)


def test_numpy_import_wrong_shape_names_the_path_and_both_shapes(tmp_path):
    path = tmp_path / "wte.npy"
    np.save(path, np.zeros((V, D), np.float32))  # the unfactorized width, but the table is (V, R)
    config = make_config(R, init_variant="numpy_import", init_wte_npy=str(path))
    with pytest.raises(ValueError, match=rf"init_wte_npy: '{path}' has shape \(40, 64\); expected shape \(40, 48\)"):
        HfEmbedModel(config)


def test_numpy_import_missing_file_is_a_value_error(tmp_path):
    config = make_config(R, init_variant="numpy_import", init_wte_npy=str(tmp_path / "absent.npy"))
    with pytest.raises(ValueError, match="init_wte_npy: cannot read .*absent.npy.*no such file"):
        HfEmbedModel(config)


# ---------------------------------------------------------------- parameter accounting


def stack_parameters(model: HfEmbedForCausalLM) -> int:
    """Distinct parameters of wte, the scale adapters and the head, counted by the model itself."""
    base = model.transformer
    modules = [base.wte, base.scale_up, base.scale_down, model.lm_head]
    params = {id(p): p for m in modules if m is not None for p in m.parameters()}
    return sum(p.numel() for p in params.values())


@pytest.mark.parametrize("rank", [None, 8, D])
@pytest.mark.parametrize("scale_tying", [True, False])
@pytest.mark.parametrize("head_tying", [True, False])
def test_parameter_count_matches_the_model(rank, scale_tying, head_tying):
    config = HfEmbedConfig(
        vocab_size=V,
        n_embd=D,
        n_layer=1,
        n_head=2,
        block_size=8,
        n_embd_wte=rank,
        n_embd_wte_scale_tying=scale_tying,
        wte_weight_tying=head_tying,
    )
    model = HfEmbedForCausalLM(config)
    assert embedding_parameter_count(config) == stack_parameters(model)
    everything_else = sum(p.numel() for n, p in model.named_parameters() if not _in_stack(n))
    assert stack_parameters(model) + everything_else == sum(p.numel() for p in model.parameters())
    if rank is not None and scale_tying and head_tying:
        assert embedding_parameter_count(config) == V * rank + D * rank


def _in_stack(name: str) -> bool:
    return name.split(".")[1] in ("wte", "scale_up", "scale_down") or name.startswith("lm_head")


def table_rows(text: str) -> dict[str, list[int | None]]:
    """The markdown table's data rows: first cell -> integer cells (None for '–'), percentages dropped."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")] if line.startswith("|") else []
        if len(cells) < 3 or not cells[1][:1].isdigit():
            continue
        rows[cells[0]] = [None if c == "–" else int(c.replace(",", "")) for c in cells[1:3]]
    return rows


def test_parameter_table_values():
    vocab, d = 50257, 768
    rows = table_rows(parameter_table())
    assert rows == {
        "none": [vocab * d, None],
        **{str(r): [vocab * r + d * r, vocab * r + 2 * d * r] for r in (256, 128, 64)},
    }
    assert rows["64"] == [3_265_600, 3_314_752]


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_cli_prints_the_table(capsys):
    """`python -m hf_embed.parameters`, run in this process (a subprocess would re-import torch)."""
    runpy.run_module("hf_embed.parameters", run_name="__main__")
    assert capsys.readouterr().out == parameter_table() + "\n"
