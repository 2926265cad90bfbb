"""convert_nanogpt: nanoGPT / ReaLLM-Forge checkpoints, checked against a plain-torch nanoGPT forward pass."""

import argparse
import logging
import math

import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.utils import logging as hf_logging

import hf_embed

L, D, H, V, T = 2, 16, 2, 40, 24
NANOGPT_ARGS = dict(n_layer=L, n_head=H, n_embd=D, block_size=T, bias=True, vocab_size=V, dropout=0.0)
IDS = torch.randint(0, V, (2, 11), generator=torch.Generator().manual_seed(3))


def nanogpt_state_dict(bias: bool = True, split_qkv: bool = False, n_embd_wte: int | None = None, seed: int = 0):
    """Random weights under nanoGPT's names (ReaLLM-Forge's split q/k/v and scale matrices on request).

    LayerNorm gains and all biases are random too, so a weight copied to the wrong place changes the logits.
    """
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g) * 0.3

    table_dim = n_embd_wte or D
    state = {"transformer.wte.weight": rand(V, table_dim), "transformer.wpe.weight": rand(T, D)}
    if n_embd_wte:
        state["transformer.scale_up.weight"] = rand(D, n_embd_wte)
        state["transformer.scale_down.weight"] = rand(D, n_embd_wte)
    linears = {"attn.c_proj": (D, D), "mlp.c_fc": (4 * D, D), "mlp.c_proj": (D, 4 * D)}
    linears.update({f"attn.c_attn_{p}": (D, D) for p in "qkv"} if split_qkv else {"attn.c_attn": (3 * D, D)})
    for i in range(L):
        for norm in ("ln_1", "ln_2"):
            state[f"transformer.h.{i}.{norm}.weight"] = 1 + rand(D)
            if bias:
                state[f"transformer.h.{i}.{norm}.bias"] = rand(D)
        for name, shape in linears.items():
            state[f"transformer.h.{i}.{name}.weight"] = rand(*shape)
            if bias and "c_attn_" not in name:  # split q/k/v: qkv_bias=False
                state[f"transformer.h.{i}.{name}.bias"] = rand(shape[0])
    state["transformer.ln_f.weight"] = 1 + rand(D)
    if bias:
        state["transformer.ln_f.bias"] = rand(D)
    state["lm_head.weight"] = state["transformer.wte.weight"]  # nanoGPT ties: the same tensor under both names
    return state


def reference_logits(state: dict, ids: torch.Tensor) -> torch.Tensor:
    """nanoGPT's forward pass from the raw state dict, plain torch ops in float64, exact (erf) GELU."""
    sd = {k: v.double() for k, v in state.items()}

    def linear(x, name):
        y = x @ sd[f"{name}.weight"].T
        return y + sd[f"{name}.bias"] if f"{name}.bias" in sd else y

    def layer_norm(x, name):
        x = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-5)
        return x * sd[f"{name}.weight"] + sd.get(f"{name}.bias", 0.0)

    def attention(x, p):
        if f"{p}.c_attn.weight" in sd:
            q, k, v = linear(x, f"{p}.c_attn").split(D, dim=-1)
        else:
            q, k, v = (linear(x, f"{p}.c_attn_{n}") for n in "qkv")  # split: ReaLLM-Forge, no q/k/v biases
        q, k, v = (t.view(*x.shape[:2], H, D // H).transpose(1, 2) for t in (q, k, v))  # (B, H, T, hd)
        scores = q @ k.transpose(-1, -2) / math.sqrt(D // H)
        causal = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool).tril()
        weights = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
        return linear((weights @ v).transpose(1, 2).reshape(x.shape), f"{p}.c_proj")

    x = sd["transformer.wte.weight"][ids]
    if "transformer.scale_up.weight" in sd:
        x = x @ sd["transformer.scale_up.weight"].T  # ReaLLM-Forge: nn.Linear(n_embd_wte, n_embd)
    x = x + sd["transformer.wpe.weight"][: ids.shape[1]]
    for i in range(L):
        p = f"transformer.h.{i}"
        x = x + attention(layer_norm(x, f"{p}.ln_1"), f"{p}.attn")
        h = linear(layer_norm(x, f"{p}.ln_2"), f"{p}.mlp.c_fc")
        x = x + linear(0.5 * h * (1 + torch.erf(h / math.sqrt(2))), f"{p}.mlp.c_proj")
    x = layer_norm(x, "transformer.ln_f")
    if "transformer.scale_down.weight" in sd:
        x = x @ sd["transformer.scale_down.weight"]  # ReaLLM-Forge: F.linear(x, scale_down.weight.t())
    return x @ sd.get("lm_head.weight", sd["transformer.wte.weight"]).T


def logits(model, ids=IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits.double()


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("prefix", ["", "_orig_mod."])
def test_nanogpt_checkpoint_matches_the_reference_forward(tmp_path, bias, prefix):
    state = nanogpt_state_dict(bias=bias)
    saved = {prefix + k: v for k, v in state.items()}
    for i in range(L):  # nanoGPT without flash attention keeps its causal mask as a buffer
        saved[f"{prefix}transformer.h.{i}.attn.bias"] = torch.ones(T, T).tril().view(1, 1, T, T)
    checkpoint = {"model": saved, "model_args": {**NANOGPT_ARGS, "bias": bias}, "iter_num": 100, "config": {}}
    torch.save(checkpoint, tmp_path / "ckpt.pt")

    model = hf_embed.convert_nanogpt(tmp_path / "ckpt.pt")
    assert model.config.activation_function == "gelu" and model.config.wte_weight_tying
    assert model.lm_head.weight is model.transformer.wte.weight
    torch.testing.assert_close(logits(model), reference_logits(state, IDS), atol=1e-5, rtol=0)

    model.save_pretrained(tmp_path / "converted")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "converted").eval()
    torch.testing.assert_close(logits(loaded), logits(model), atol=0, rtol=0)


def test_a_checkpoint_without_lm_head_is_tied():
    state = nanogpt_state_dict()
    del state["lm_head.weight"]
    model = hf_embed.convert_nanogpt({"model": state, "model_args": NANOGPT_ARGS})
    assert model.config.wte_weight_tying
    torch.testing.assert_close(logits(model), reference_logits(state, IDS), atol=1e-5, rtol=0)


def test_reallm_forge_factorized_checkpoint_with_split_qkv(caplog):
    state = nanogpt_state_dict(split_qkv=True, n_embd_wte=4)  # qkv_bias=False: no q/k/v biases
    state["lm_head.weight"] = torch.randn(V, 4)
    args = {
        **NANOGPT_ARGS,
        "n_embd_wte": 4,
        "n_embd_wte_scale_tying": False,
        "wte_weight_tying": False,
        "qkv_bias": False,
        "norm_variant_attn": "layernorm",
        "norm_variant_output": "layernorm",
        "n_kv_group": H,
        "export_wte_npy": "wte.npy",
        "eval_interval": 250,
        "softmax_io_logging": False,
    }
    hf_logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING):
            model = hf_embed.convert_nanogpt({"model": state, "model_args": args})
    finally:
        hf_logging.disable_propagation()
    assert "['eval_interval', 'softmax_io_logging']" in caplog.text  # unknown model_args are reported
    assert "export_wte_npy" in caplog.text and model.config.export_wte_npy is None
    assert model.config.n_embd_wte == 4 and not model.config.n_embd_wte_scale_tying
    torch.testing.assert_close(logits(model), reference_logits(state, IDS), atol=1e-5, rtol=0)


def test_tied_scale_matrices_are_kept_once():
    state = nanogpt_state_dict(n_embd_wte=4)
    state["transformer.scale_down.weight"] = state["transformer.scale_up.weight"]
    model = hf_embed.convert_nanogpt({"model": state, "model_args": {**NANOGPT_ARGS, "n_embd_wte": 4}})
    assert model.config.n_embd_wte_scale_tying and "transformer.scale_down.weight" not in model.state_dict()
    torch.testing.assert_close(logits(model), reference_logits(state, IDS), atol=1e-5, rtol=0)

    state["transformer.scale_down.weight"] = torch.randn(D, 4)
    with pytest.raises(ValueError, match="scale_down.weight differs from transformer.scale_up.weight"):
        hf_embed.convert_nanogpt({"model": state, "model_args": {**NANOGPT_ARGS, "n_embd_wte": 4}})


def test_an_untied_head_is_read_from_the_weights():
    state = nanogpt_state_dict()
    state["lm_head.weight"] = torch.randn(V, D)
    model = hf_embed.convert_nanogpt({"model": state, "model_args": NANOGPT_ARGS})
    assert not model.config.wte_weight_tying
    torch.testing.assert_close(logits(model), reference_logits(state, IDS), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="lm_head.weight differs from transformer.wte.weight"):
        hf_embed.convert_nanogpt({"model": state, "model_args": {**NANOGPT_ARGS, "wte_weight_tying": True}})


def test_a_bare_state_dict_needs_only_n_head():
    state = nanogpt_state_dict(bias=False)
    with pytest.raises(ValueError, match=r"config_overrides=\{'n_head': \.\.\.\}"):
        hf_embed.convert_nanogpt(state)
    model = hf_embed.convert_nanogpt(state, config_overrides={"n_head": H})
    assert (model.config.n_layer, model.config.block_size, model.config.bias) == (L, T, False)
    torch.testing.assert_close(logits(model), reference_logits(state, IDS), atol=1e-5, rtol=0)


def test_shared_fire_weights_are_renamed_once():
    args = {**NANOGPT_ARGS, "use_fire_embeddings": True, "shared_fire_embeddings": True}
    source = hf_embed.HfEmbedForCausalLM(hf_embed.HfEmbedConfig(**args, activation_function="gelu")).eval()
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("transformer.fire.")}
    for i in range(L):  # upstream passes one FIRE module to every layer: the state dict lists it per layer
        for name, value in source.transformer.fire.state_dict().items():
            state[f"transformer.h.{i}.attn.fire_pos_enc.{name}"] = value
        state[f"transformer.h.{i}.attn.fire_pos_enc.init_L"] = torch.tensor(512.0)
    model = hf_embed.convert_nanogpt({"model": state, "model_args": args})
    torch.testing.assert_close(logits(model), logits(source), atol=0, rtol=0)


class CodeOnLoad:
    """Unpickling this creates a file: the kind of payload `weights_only=True` must refuse."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "code-ran"
    torch.save(
        {"model": nanogpt_state_dict(), "model_args": NANOGPT_ARGS, "x": CodeOnLoad(str(marker))}, tmp_path / "a.pt"
    )
    with pytest.raises(ValueError, match=r"refused to load .*a\.pt.*can execute code"):
        hf_embed.convert_nanogpt(tmp_path / "a.pt")
    assert not marker.exists()


def test_a_checkpoint_with_an_argparse_namespace_is_refused_but_its_dict_converts(tmp_path):
    state = nanogpt_state_dict()
    checkpoint = {"model": state, "model_args": NANOGPT_ARGS, "config": argparse.Namespace(lr=1e-3)}
    torch.save(checkpoint, tmp_path / "ckpt.pt")
    with pytest.raises(ValueError, match="pass the dict"):
        hf_embed.convert_nanogpt(tmp_path / "ckpt.pt")
    model = hf_embed.convert_nanogpt(checkpoint)
    torch.testing.assert_close(logits(model), reference_logits(state, IDS), atol=1e-5, rtol=0)


def test_unknown_and_missing_weights_are_reported():
    state = nanogpt_state_dict()
    state["transformer.h.0.attn.extra.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"unknown keys \['transformer.h.0.attn.extra.weight'\]"):
        hf_embed.convert_nanogpt({"model": state, "model_args": NANOGPT_ARGS})
    state = nanogpt_state_dict()
    del state["transformer.h.1.mlp.c_fc.bias"]
    with pytest.raises(ValueError, match=r"missing keys \['transformer.h.1.mlp.c_fc.bias'\]"):
        hf_embed.convert_nanogpt({"model": state, "model_args": NANOGPT_ARGS})


@pytest.mark.parametrize(
    "name, value",
    [("norm_variant_attn", "rmsnorm"), ("activation_variant", "relu"), ("n_kv_group", 1), ("use_moe", True)],
)
def test_an_unsupported_architecture_argument_is_refused(name, value):
    with pytest.raises(ValueError, match=rf"model_args\['{name}'\]={value!r}.*allowed"):
        hf_embed.convert_nanogpt({"model": nanogpt_state_dict(), "model_args": {**NANOGPT_ARGS, name: value}})


def test_bad_paths_and_overrides_are_named(tmp_path):
    with pytest.raises(ValueError, match="missing.pt' does not exist"):
        hf_embed.convert_nanogpt(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        hf_embed.convert_nanogpt(tmp_path / "junk.pt")
    checkpoint = {"model": nanogpt_state_dict(), "model_args": NANOGPT_ARGS}
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['n_heads'\]"):
        hf_embed.convert_nanogpt(checkpoint, config_overrides={"n_heads": 2})
    with pytest.raises(ValueError, match=r"shapes .* differ"):
        hf_embed.convert_nanogpt(checkpoint, config_overrides={"block_size": 8})
