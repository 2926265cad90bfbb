"""FIRE bias against a direct numpy evaluation of the SPEC formula, and the additive causal mask it rides on."""

import numpy as np
import pytest
import torch
from torch import nn

from hf_embed import HfEmbedConfig
from hf_embed.fire import FireBias, NoBias, additive_causal_mask

H = 4


def fire_config(**overrides) -> HfEmbedConfig:
    kwargs = dict(
        vocab_size=50, n_embd=32, n_layer=1, n_head=H, block_size=32, use_fire_embeddings=True, fire_mlp_width=8
    )
    kwargs.update(overrides)
    return HfEmbedConfig(**kwargs)


def fire_module(seed: int = 0, c: float | None = None, l_multiplier: float | None = None, **overrides) -> FireBias:
    """A FireBias with O(1) random MLP weights, so the bias varies visibly with i − j."""
    torch.manual_seed(seed)
    module = FireBias(fire_config(**overrides))
    with torch.no_grad():
        for linear in module.mlp:
            if isinstance(linear, nn.Linear):
                linear.weight.normal_(0.0, 1.0)
                linear.bias.normal_(0.0, 0.5)
        if c is not None:
            module.c.fill_(c)
        if l_multiplier is not None:
            module.L_multiplier.fill_(l_multiplier)
    return module


def numpy_fire(module: FireBias, config: HfEmbedConfig, q_offset: int, q_len: int, k_len: int) -> np.ndarray:
    """The SPEC formula in float64, with the module's parameters but none of its code.  -> (H, q_len, k_len)"""
    c = abs(module.c.item())
    length = abs(module.L_multiplier.item() * config.fire_init_L)
    b = config.fire_log_bias
    i = np.arange(q_offset, q_offset + q_len, dtype=np.float64)[:, None]
    j = np.arange(k_len, dtype=np.float64)[None, :]
    u = np.log(c * np.maximum(i - j, 0) + b) / np.maximum(np.log(c * np.maximum(i, length) + b), 1e-6)

    linears = [m for m in module.mlp if isinstance(m, nn.Linear)]
    assert len(linears) == config.fire_num_hidden_layers + 1
    weights = [(m.weight.detach().double().numpy(), m.bias.detach().double().numpy()) for m in linears]
    x = u[..., None]  # (q, k, 1)
    for index, (w, bias) in enumerate(weights):  # Linear, then (ReLU, Linear) for every later layer
        if index:
            x = np.maximum(x, 0)
        x = x @ w.T + bias
    if config.fire_outermost_sigma:
        x = np.maximum(x, 0)
    return x.transpose(2, 0, 1)


CASES = {
    # name: (module overrides, q_offset, q_len, k_len)
    "all_rows_below_L": (dict(), 0, 12, 12),
    "rows_at_and_past_L": (dict(fire_init_L=5.0), 0, 12, 12),
    "every_row_past_L": (dict(fire_init_L=2.0), 0, 9, 9),
    "negative_c": (dict(c=-0.7, fire_init_L=6.0), 0, 12, 12),
    "negative_L_multiplier": (dict(l_multiplier=-1.5, fire_init_L=4.0), 0, 12, 12),
    "decode_rows_cross_L": (dict(fire_init_L=8.0), 6, 4, 10),
    "one_decode_row_past_L": (dict(fire_init_L=3.0, c=-0.2), 15, 1, 16),
    "deep_mlp_sigma_bias": (
        dict(fire_num_hidden_layers=3, fire_outermost_sigma=True, fire_log_bias=2.5, fire_init_L=7.0),
        0,
        11,
        11,
    ),
    "c_zero": (dict(c=0.0, fire_init_L=4.0), 0, 8, 8),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_bias_equals_numpy_formula(case):
    overrides, q_offset, q_len, k_len = CASES[case]
    module_args = {key: overrides.pop(key) for key in ("c", "l_multiplier") if key in overrides}
    module = fire_module(**module_args, **overrides)
    config = fire_config(**overrides)
    expected = torch.from_numpy(numpy_fire(module, config, q_offset, q_len, k_len)).float()
    with torch.no_grad():
        bias = module.bias(q_offset, q_len, k_len)
    assert bias.shape == (H, q_len, k_len)
    torch.testing.assert_close(bias, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fire_init_L", [512.0, 6.0])
def test_decode_rows_are_rows_of_the_full_bias(fire_init_L):
    module = fire_module(fire_init_L=fire_init_L)
    with torch.no_grad():
        full = module.bias(0, 14, 14)
        for offset in (1, 5, 6, 13):
            torch.testing.assert_close(module.bias(offset, 14 - offset, 14), full[:, offset:], rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(
                module.bias(offset, 1, offset + 1), full[:, offset : offset + 1, : offset + 1], rtol=1e-6, atol=1e-6
            )


def test_rows_below_L_depend_on_distance_only():
    """Rows i < L form a Toeplitz matrix: bias[h, i, j] = f(i − j)."""
    bias = fire_module().bias(0, 10, 10).detach()
    distance = torch.arange(10)[:, None] - torch.arange(10)
    for d in range(10):
        values = bias[:, distance == d]  # (H, 10 − d)
        torch.testing.assert_close(values, values[:, :1].expand_as(values), rtol=0, atol=1e-6)


@pytest.mark.parametrize("fire_init_L", [512.0, 16.0])
def test_finite_far_past_block_size(fire_init_L):
    """8 × block_size keys: every entry (masked ones too) and every gradient stays finite."""
    config = fire_config(fire_init_L=fire_init_L)
    module = fire_module(fire_init_L=fire_init_L, c=3.0)
    length = 8 * config.block_size
    bias = module.bias(0, length, length)
    assert bias.shape == (H, length, length) and torch.isfinite(bias).all()
    bias.square().mean().backward()
    for name, parameter in module.named_parameters():
        assert torch.isfinite(parameter.grad).all(), name
    assert module.c.grad != 0 and module.mlp[0].weight.grad.abs().sum() > 0


def test_gradients_reach_c_and_L():
    module = fire_module(fire_init_L=6.0)
    module.bias(0, 10, 10).sum().backward()
    assert module.c.grad.abs() > 0 and module.L_multiplier.grad.abs() > 0


def test_module_starts_from_config_values_and_mlp_shape():
    config = fire_config(fire_init_c=0.25, fire_num_hidden_layers=2, fire_outermost_sigma=True)
    module = FireBias(config)
    assert module.c.item() == 0.25 and module.L_multiplier.item() == 1.0
    kinds = [type(m) for m in module.mlp]
    assert kinds == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear, nn.ReLU]
    assert module.mlp[0].in_features == 1 and module.mlp[-2].out_features == H
    assert {name for name, _ in module.named_parameters()} >= {"c", "L_multiplier"}
    assert not list(module.buffers())


def test_forward_adds_the_bias_to_every_batch_row_of_the_mask():
    module = fire_module()
    mask = additive_causal_mask(torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]]), 0, 4, torch.float32, torch.device("cpu"))
    with torch.no_grad():
        out = module(mask, 0)
        assert out.shape == (2, H, 4, 4)
        torch.testing.assert_close(out, mask + module.bias(0, 4, 4), rtol=0, atol=0)
    assert NoBias()(mask, 3) is mask and NoBias()(None, 0) is None


def test_additive_causal_mask():
    minimum = torch.finfo(torch.float32).min
    cpu = torch.device("cpu")
    mask = additive_causal_mask(None, 0, 3, torch.float32, cpu)
    expected = torch.tensor([[0, 1, 1], [0, 0, 1], [0, 0, 0]], dtype=torch.float32) * minimum
    torch.testing.assert_close(mask, expected[None, None], rtol=0, atol=0)

    padded = additive_causal_mask(torch.tensor([[0, 1, 1, 1, 1]]), 3, 2, torch.float32, cpu)  # two new queries
    allowed = torch.tensor([[0, 1, 1, 1, 0], [0, 1, 1, 1, 1]], dtype=torch.bool)
    torch.testing.assert_close(padded, torch.zeros(1, 1, 2, 5).masked_fill(~allowed, minimum), rtol=0, atol=0)
    assert not torch.isinf(padded).any()

    static = additive_causal_mask(torch.tensor([[0, 1, 1, 1]]), 3, 1, torch.float32, cpu, k_len=7)  # 3 unused slots
    allowed = torch.tensor([[0, 1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    torch.testing.assert_close(static, torch.zeros(1, 1, 1, 7).masked_fill(~allowed, minimum), rtol=0, atol=0)

    four_d = torch.tensor([[[[True, False], [True, True]]]])
    converted = additive_causal_mask(four_d, 0, 2, torch.bfloat16, cpu)
    assert converted.dtype == torch.bfloat16
    assert converted[0, 0, 0, 1] == torch.finfo(torch.bfloat16).min and converted[0, 0, 1].eq(0).all()
