"""Property-based tests over the whole configuration space (hypothesis, derandomized, a bounded number of examples).

A drawn configuration combines freely: absolute positions, RoPE or SoAP (any valid `rope_length`), FIRE per layer
or shared (any MLP depth and width, a threshold L below or above the sequence length, any sign of c), a factorized
token table of any width with or without adapter tying and head tying, every `init_variant` whose needs hold
(the vocabulary is drawn within them), freezing, bias, activation, and the eager or SDPA attention path.
For each one:

- forward and backward are finite, and gradients exist for exactly the trainable parameters;
- `save_pretrained` -> `from_pretrained` gives bit-identical logits and keeps ties and freezing, on a machine
  without the import files (they are deleted before loading);
- greedy `generate` with the KV cache equals generation without it;
- the config JSON is strict JSON and round-trips every field.
"""

import json
import math
import os
import tempfile
from dataclasses import dataclass

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hf_embed import HfEmbedConfig, HfEmbedForCausalLM

SETTINGS = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# (vocab cap for a table of width `dim`) for the init variants whose needs depend on it (SPEC §4)
_VOCAB_CAP = {
    "onehot": lambda dim: dim,
    "hypercube": lambda dim: 2**dim,
    "unique_hypercube": lambda dim: 2 ** (dim - 1),
}
INIT_VARIANTS = [
    "gaussian",
    "onehot",
    "hypercube",
    "numpy_import",
    "rand_hypercube",
    "angle_hypersphere",
    "unique_hypercube",
    "gaussian_norm_range",
]


@dataclass
class Drawn:
    """A drawn configuration (as keyword arguments), the files it imports, and an input length."""

    kwargs: dict
    files: dict  # path -> array written before the model is built
    seq_len: int
    seed: int


@st.composite
def configurations(draw) -> Drawn:
    n_head = draw(st.sampled_from([1, 2, 4]))
    head_dim = draw(st.sampled_from([2, 3, 4, 6, 8]).filter(lambda hd: n_head * hd <= 32))
    n_embd = n_head * head_dim
    kwargs: dict = dict(
        n_embd=n_embd,
        n_head=n_head,
        n_layer=draw(st.integers(1, 2)),
        block_size=draw(st.integers(4, 12)),
        bias=draw(st.booleans()),
        activation_function=draw(st.sampled_from(["gelu_new", "gelu"])),
        attn_implementation=draw(st.sampled_from(["eager", "sdpa"])),
        pad_token_id=0,
        eos_token_id=None,
    )
    # --- positions: any combination, each mechanism with its own options ---
    kwargs["use_abs_pos_embeddings"] = draw(st.booleans())
    if draw(st.booleans()):
        kwargs["use_rotary_embeddings"] = True
        kwargs["rope_variant"] = draw(st.sampled_from(["rope", "soap"]))
        lengths = list(range(2, head_dim + 1, 2))
        if lengths:
            choices = lengths + ([None] if head_dim % 2 == 0 else [])
            kwargs["rope_length"] = draw(st.sampled_from(choices))
        else:  # hd = 1 cannot rotate; not drawn (head_dim >= 2), kept for clarity
            kwargs["use_rotary_embeddings"] = False
        kwargs["rope_theta"] = draw(st.sampled_from([10000.0, 100.0, 2.0]))
        kwargs["sym_rot_num_angles"] = draw(st.integers(1, 16))
    if draw(st.booleans()):
        kwargs["use_fire_embeddings"] = True
        kwargs["shared_fire_embeddings"] = draw(st.booleans())
        kwargs["fire_mlp_width"] = draw(st.integers(1, 8))
        kwargs["fire_num_hidden_layers"] = draw(st.integers(1, 3))
        kwargs["fire_init_c"] = draw(st.sampled_from([0.1, -0.5, 0.0, 3.0]))
        kwargs["fire_init_L"] = draw(st.sampled_from([512.0, 3.0, 0.5]))
        kwargs["fire_log_bias"] = draw(st.sampled_from([1.0, 0.01, 5.0]))
        kwargs["fire_outermost_sigma"] = draw(st.booleans())
    # --- token table ---
    if draw(st.booleans()):
        kwargs["n_embd_wte"] = draw(st.integers(1, n_embd + 4))  # r > d is legal too
        kwargs["n_embd_wte_scale_tying"] = draw(st.booleans())
        kwargs["import_scale_matrices_freeze"] = draw(st.booleans())
    kwargs["wte_weight_tying"] = draw(st.booleans())
    kwargs["import_wte_freeze"] = draw(st.booleans())
    dim = kwargs.get("n_embd_wte") or n_embd
    # --- initialisation: any variant whose needs hold, the vocabulary drawn within them ---
    variant = draw(st.sampled_from([v for v in INIT_VARIANTS if v not in _VOCAB_CAP or _VOCAB_CAP[v](dim) >= 2]))
    cap = min(64, _VOCAB_CAP[variant](dim)) if variant in _VOCAB_CAP else 64
    vocab = draw(st.integers(2, cap))
    kwargs.update(vocab_size=vocab, init_variant=variant, init_scale=draw(st.sampled_from([0.01, 1.0, 0.5])))
    files = {}
    if variant == "angle_hypersphere":
        kwargs["init_radius"] = draw(st.sampled_from([1.0, 0.05, 4.0]))
    if variant == "gaussian_norm_range":
        typical = 0.02 * math.sqrt(dim)
        kwargs["gaussian_min_norm"] = draw(st.sampled_from([0.0, 0.5 * typical]))
        kwargs["gaussian_max_norm"] = draw(st.sampled_from([math.inf, 2.0 * typical]))
    if variant == "numpy_import":
        kwargs["init_wte_npy"] = "init_table.npy"
        files["init_table.npy"] = np.random.default_rng(vocab * dim).normal(size=(vocab, dim)).astype(np.float32)
    if draw(st.booleans()):  # also import a token table over the initialisation
        kwargs["import_wte_npy"] = "imported_wte.npy"
        files["imported_wte.npy"] = np.random.default_rng(dim).uniform(-1, 1, size=(vocab, dim))
    longest = kwargs["block_size"] if kwargs["use_abs_pos_embeddings"] else 2 * kwargs["block_size"]
    seq_len = draw(st.integers(1, min(longest, 12)))
    return Drawn(kwargs, files, seq_len, draw(st.integers(0, 2**16)))


def build(drawn: Drawn, folder: str) -> HfEmbedForCausalLM:
    """Write the import files into `folder`, build the model from its config there (relative paths), in train mode."""
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        for name, array in drawn.files.items():
            np.save(name, array)
        config = HfEmbedConfig(**drawn.kwargs)
        torch.manual_seed(drawn.seed)
        return HfEmbedForCausalLM(config)
    finally:
        os.chdir(cwd)


def tokens(drawn: Drawn, batch: int, length: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(drawn.seed)
    return torch.randint(0, drawn.kwargs["vocab_size"], (batch, length), generator=generator)


@SETTINGS
@given(configurations())
def test_forward_backward_finite_and_gradients_exactly_on_trainable_parameters(drawn):
    with tempfile.TemporaryDirectory() as folder:
        model = build(drawn, folder).train()
    ids = tokens(drawn, 2, drawn.seq_len)
    output = model(ids, labels=ids)
    assert output.logits.shape == (2, drawn.seq_len, drawn.kwargs["vocab_size"])
    assert torch.isfinite(output.logits).all()
    if drawn.seq_len > 1:  # one token has no next-token target: the loss is NaN by definition (0 / 0)
        assert torch.isfinite(output.loss)
    loss = output.logits.float().square().mean() + (output.loss if drawn.seq_len > 1 else 0)
    loss.backward()
    named = dict(model.named_parameters())
    trainable = {name for name, p in named.items() if p.requires_grad}
    with_grad = {name for name, p in named.items() if p.grad is not None}
    assert with_grad == trainable
    for name in with_grad:
        assert torch.isfinite(named[name].grad).all(), name
    frozen = {name for name in named if name not in trainable}
    expected_frozen = set()
    if drawn.kwargs["import_wte_freeze"]:
        expected_frozen.add("transformer.wte.weight")
    if drawn.kwargs.get("import_scale_matrices_freeze"):
        expected_frozen |= {n for n in named if n.startswith(("transformer.scale_up.", "transformer.scale_down."))}
    assert frozen == expected_frozen
    assert (model.lm_head.weight is model.transformer.wte.weight) == drawn.kwargs["wte_weight_tying"]


@SETTINGS
@given(configurations())
def test_save_and_load_gives_identical_logits_without_the_import_files(drawn):
    ids = tokens(drawn, 2, drawn.seq_len)
    with tempfile.TemporaryDirectory() as folder:
        model = build(drawn, folder).eval()
        with torch.no_grad():
            before = model(ids).logits
        model.save_pretrained(os.path.join(folder, "saved"))
        for name in drawn.files:  # the saved folder must load where the .npy files are absent
            os.remove(os.path.join(folder, name))
        # the attention backend is a runtime choice that config.json does not keep (transformers' convention)
        loaded = HfEmbedForCausalLM.from_pretrained(
            os.path.join(folder, "saved"), attn_implementation=drawn.kwargs["attn_implementation"]
        ).eval()
        with open(os.path.join(folder, "saved", "config.json")) as handle:
            _strict_json(handle.read())
    with torch.no_grad():
        after = loaded(ids).logits
        # Loaded tensors sit at whatever alignment the safetensors file gives them, and CPU BLAS kernels round
        # differently by alignment (an ulp or so). In freshly allocated memory the logits are bit-identical.
        torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)
        for parameter in loaded.parameters():
            parameter.data = parameter.data.clone()
        assert torch.equal(loaded(ids).logits, before)
    assert (loaded.lm_head.weight is loaded.transformer.wte.weight) == drawn.kwargs["wte_weight_tying"]
    original = {n: p.requires_grad for n, p in model.named_parameters()}
    assert {n: p.requires_grad for n, p in loaded.named_parameters()} == original
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name


@SETTINGS
@given(configurations(), st.integers(1, 6))
def test_greedy_generate_with_cache_equals_without(drawn, new_tokens):
    with tempfile.TemporaryDirectory() as folder:
        model = build(drawn, folder).eval()
    limit = drawn.kwargs["block_size"] if drawn.kwargs["use_abs_pos_embeddings"] else 24
    prompt_len = max(1, min(drawn.seq_len, limit - new_tokens))
    new_tokens = min(new_tokens, limit - prompt_len)
    prompt = tokens(drawn, 2, prompt_len)
    runs = {}
    with torch.no_grad():
        for use_cache in (True, False):
            runs[use_cache] = model.generate(
                prompt,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                use_cache=use_cache,
                output_logits=True,
                return_dict_in_generate=True,
            )
    cached, uncached = runs[True], runs[False]
    scores_cached, scores_uncached = torch.stack(cached.logits), torch.stack(uncached.logits)
    same = torch.equal(cached.sequences, uncached.sequences)
    if not same:  # only a near-tie between the top two logits may flip greedy decoding through rounding
        step = int((cached.sequences != uncached.sequences).any(0).nonzero()[0]) - prompt_len
        top2 = scores_uncached[step].topk(2, dim=-1).values
        assert (top2[:, 0] - top2[:, 1]).min() < 1e-5, "cached and uncached greedy decoding diverged"
        scores_cached, scores_uncached = scores_cached[: step + 1], scores_uncached[: step + 1]
    torch.testing.assert_close(scores_cached, scores_uncached, rtol=1e-4, atol=1e-5)


def _strict_json(text: str) -> dict:
    def refuse(constant: str):
        raise AssertionError(f"config JSON holds the non-standard token {constant}")

    return json.loads(text, parse_constant=refuse)


@SETTINGS
@given(configurations())
def test_config_json_is_strict_and_round_trips(drawn):
    config = HfEmbedConfig(**drawn.kwargs)
    text = config.to_json_string()
    _strict_json(text)
    back = HfEmbedConfig.from_dict(json.loads(text))  # as written: infinity is {"__float__": "Infinity"}
    for field in HfEmbedConfig.argument_fields():
        want, got = getattr(config, field.name), getattr(back, field.name)
        assert got == want and type(got) is type(want), field.name
    with tempfile.TemporaryDirectory() as folder:
        config.save_pretrained(folder)
        with open(os.path.join(folder, "config.json")) as handle:
            _strict_json(handle.read())
        again = HfEmbedConfig.from_pretrained(folder)
    assert again.to_diff_dict() == config.to_diff_dict()
