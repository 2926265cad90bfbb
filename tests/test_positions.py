"""The position stack in a whole model: learned absolute, RoPE / SoAP (full or partial), FIRE (per layer or shared)
and their mixes, with and without a factorized token table, on the eager and SDPA paths and under a KV cache."""

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from hf_embed import HfEmbedConfig, HfEmbedForCausalLM
from hf_embed.fire import FireBias, NoBias

BLOCK = 24
NO_ABS = dict(use_abs_pos_embeddings=False)
ROPE = dict(use_rotary_embeddings=True)
SOAP = dict(use_rotary_embeddings=True, rope_variant="soap", sym_rot_num_angles=16)
FIRE = dict(use_fire_embeddings=True)
SHARED_FIRE = dict(use_fire_embeddings=True, shared_fire_embeddings=True)

COMBOS = {
    "abs": {},
    "none": NO_ABS,
    "rope": {**NO_ABS, **ROPE},
    "rope_partial": {**NO_ABS, **ROPE, "rope_length": 4},
    "soap": {**NO_ABS, **SOAP},
    "fire": {**NO_ABS, **FIRE},
    "shared_fire": {**NO_ABS, **SHARED_FIRE},
    "abs_rope": ROPE,
    "abs_fire": FIRE,
    "rope_fire": {**NO_ABS, **ROPE, **FIRE},
    "soap_partial_shared_fire": {**NO_ABS, **SOAP, **SHARED_FIRE, "rope_length": 2},
    "abs_rope_shared_fire": {**ROPE, **SHARED_FIRE, "rope_theta": 100.0},
    # L below the sequence lengths used here: rows i ≥ L take FIRE's per-row path (cache offsets cross L).
    "fire_small_L": {**NO_ABS, **FIRE, "fire_init_L": 5.0},
}
# FIRE's normaliser max(i, L) uses the sequence index i, which left padding shifts once i ≥ L.
SHIFT_INVARIANT = [name for name in COMBOS if name != "fire_small_L"]
FACTORIZED = {"full": None, "factorized": 8}


def model_for(combo: str, factorized: str, seed: int = 0, **overrides) -> HfEmbedForCausalLM:
    """A tiny model whose position parameters are large enough to change the logits visibly."""
    kwargs = dict(
        vocab_size=97,
        n_embd=32,
        n_layer=2,
        n_head=4,
        block_size=BLOCK,
        pad_token_id=0,
        eos_token_id=None,
        initializer_range=0.1,
        embedding_std_init=0.3,
        n_embd_wte=FACTORIZED[factorized],
        **COMBOS[combo],
    )
    kwargs.update(overrides)
    torch.manual_seed(seed)
    model = HfEmbedForCausalLM(HfEmbedConfig(**kwargs)).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, FireBias):
                for linear in module.mlp:
                    if isinstance(linear, nn.Linear):
                        linear.weight.normal_(0.0, 1.0)
                        linear.bias.normal_(0.0, 0.5)
                module.c.fill_(-0.4)  # negative on purpose: the formula takes |c|
    return model


def tokens(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(2, 97, shape, generator=torch.Generator().manual_seed(seed))


def greedy(model: HfEmbedForCausalLM, input_ids: torch.Tensor, new: int, **kwargs):
    return model.generate(
        input_ids,
        max_new_tokens=new,
        do_sample=False,
        return_dict_in_generate=True,
        output_logits=True,
        **kwargs,
    )


every_combo = pytest.mark.parametrize("combo", list(COMBOS))
every_table = pytest.mark.parametrize("factorized", list(FACTORIZED))


@every_table
@every_combo
def test_forward_and_backward(combo, factorized):
    model = model_for(combo, factorized).train()
    ids = tokens(2, 10)
    output = model(ids, labels=ids)
    assert output.logits.shape == (2, 10, 97) and torch.isfinite(output.loss)
    output.loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    position_parameters = [p for n, p in model.named_parameters() if "wpe" in n or "fire" in n]
    assert all(p.grad.abs().sum() > 0 for p in position_parameters)


@pytest.mark.parametrize("combo", ["rope_fire", "soap_partial_shared_fire", "fire_small_L"])
def test_gradient_checkpointing_gives_the_same_gradients(combo):
    """The rotation object and the FIRE mask (shared: one tensor with a graph) pass through checkpointed blocks."""
    model = model_for(combo, "full").train()
    ids = tokens(2, 10)
    attention_mask = (torch.arange(10) >= torch.tensor([[3], [0]])).long()
    gradients = []
    for checkpointing in (False, True):
        if checkpointing:
            model.activation_checkpointing_enable()
        model.zero_grad()
        model(ids, attention_mask=attention_mask, labels=ids, use_cache=False).loss.backward()
        gradients.append({name: p.grad.clone() for name, p in model.named_parameters()})
    for name, gradient in gradients[0].items():
        torch.testing.assert_close(gradients[1][name], gradient, rtol=1e-5, atol=1e-6, msg=name)


@every_table
@every_combo
def test_cached_decoding_equals_full_forward(combo, factorized):
    """Prefill, then one token at a time through the cache: the same logits as one pass over the whole input."""
    model = model_for(combo, factorized)
    ids = tokens(2, 12)
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        step = model(ids[:, :7], use_cache=True)
        logits, cache = [step.logits], step.cache
        for t in range(7, 12):
            step = model(ids[:, t : t + 1], cache=cache, use_cache=True)
            logits.append(step.logits)
            cache = step.cache
    torch.testing.assert_close(torch.cat(logits, dim=1), full, rtol=1e-5, atol=1e-5)


@every_table
@every_combo
def test_generate_with_cache_equals_without(combo, factorized):
    model = model_for(combo, factorized)
    prompt = tokens(2, 6)
    cached = greedy(model, prompt, 10, use_cache=True)
    uncached = greedy(model, prompt, 10, use_cache=False)
    torch.testing.assert_close(cached.sequences, uncached.sequences, rtol=0, atol=0)
    torch.testing.assert_close(torch.stack(cached.logits), torch.stack(uncached.logits), rtol=1e-5, atol=1e-5)


@every_table
@pytest.mark.parametrize("combo", SHIFT_INVARIANT)
def test_left_padded_batch_equals_rows_alone(combo, factorized):
    model = model_for(combo, factorized)
    short, long = tokens(1, 4, seed=2), tokens(1, 9, seed=3)
    batch = torch.cat([torch.cat([torch.zeros(1, 5, dtype=torch.long), short], dim=1), long])
    attention_mask = (torch.arange(9) >= torch.tensor([[5], [0]])).long()
    together = greedy(model, batch, 6, attention_mask=attention_mask)
    for row, prompt in enumerate((short, long)):
        alone = greedy(model, prompt, 6)
        torch.testing.assert_close(together.sequences[row, 9:], alone.sequences[0, prompt.shape[1] :], rtol=0, atol=0)
        torch.testing.assert_close(
            torch.stack(together.logits)[:, row], torch.stack(alone.logits)[:, 0], rtol=1e-5, atol=1e-5
        )


@every_combo
def test_static_cache_equals_dynamic_cache(combo):
    """A static cache hands the model its full preallocated length and a live length tensor: same generation."""
    model = model_for(combo, "full")
    prompt = tokens(2, 8)
    attention_mask = (torch.arange(8) >= torch.tensor([[3], [0]])).long()
    dynamic = greedy(model, prompt, 6, attention_mask=attention_mask)
    for implementation in ("sdpa", "eager"):
        model.set_attn_implementation(implementation)
        static = greedy(model, prompt, 6, attention_mask=attention_mask, cache_implementation="static")
        torch.testing.assert_close(static.sequences, dynamic.sequences, rtol=0, atol=0)
        torch.testing.assert_close(torch.stack(static.logits), torch.stack(dynamic.logits), rtol=1e-5, atol=1e-5)


@every_table
@every_combo
def test_eager_equals_sdpa(combo, factorized):
    """Same logits on both attention paths: a left-padded prefill, then a cached decoding step."""
    model = model_for(combo, factorized)
    ids = tokens(2, 10)
    attention_mask = (torch.arange(10) >= torch.tensor([[3], [0]])).long()
    logits = {}
    for implementation in ("eager", "sdpa"):
        model.set_attn_implementation(implementation)
        with torch.no_grad():
            prefill = model(ids[:, :8], attention_mask=attention_mask[:, :8], use_cache=True)
            step = model(ids[:, 8:], attention_mask=attention_mask, cache=prefill.cache, use_cache=True)
        logits[implementation] = torch.cat([prefill.logits, step.logits], dim=1)[attention_mask.bool()]
    torch.testing.assert_close(logits["eager"], logits["sdpa"], rtol=1e-5, atol=1e-5)


@every_table
@every_combo
def test_save_and_load_round_trip(combo, factorized, tmp_path):
    model = model_for(combo, factorized)
    model.save_pretrained(tmp_path)
    ids = tokens(2, 10)
    with torch.no_grad():
        expected = model(ids).logits
        for implementation in ("eager", "sdpa"):
            loaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation=implementation).eval()
            assert type(loaded) is HfEmbedForCausalLM
            torch.testing.assert_close(loaded(ids).logits, expected, rtol=1e-5, atol=1e-5)
    assert loaded.state_dict().keys() == model.state_dict().keys()
    assert not list(loaded.buffers())  # RoPE angles come from position_ids: no buffer that loading could miss


@pytest.mark.parametrize("combo", [name for name in COMBOS if "abs" not in name])
def test_shifting_every_position_id_leaves_relative_models_unchanged(combo):
    model = model_for(combo, "full")
    ids = tokens(2, 10)
    positions = torch.arange(10)[None].expand(2, -1)
    with torch.no_grad():
        base = model(ids, position_ids=positions).logits
        for shift in (1, 37, 500):
            torch.testing.assert_close(model(ids, position_ids=positions + shift).logits, base, rtol=1e-5, atol=1e-5)


def test_soap_positions_p_and_p_plus_n_are_identical():
    model = model_for("soap_partial_shared_fire", "full", use_abs_pos_embeddings=False)
    n = model.config.sym_rot_num_angles
    ids = tokens(1, 10)
    positions = torch.tensor([[0, 3, 5, 6, 9, 10, 11, 12, 15, 15]])
    with torch.no_grad():
        base = model(ids, position_ids=positions).logits
        torch.testing.assert_close(model(ids, position_ids=positions + n).logits, base, rtol=0, atol=0)
        torch.testing.assert_close(model(ids, position_ids=positions + 7 * n).logits, base, rtol=0, atol=0)
        assert not torch.allclose(model(ids, position_ids=positions * 2).logits, base, atol=1e-3)


@pytest.mark.parametrize("combo", ["abs", "rope", "abs_rope", "soap"])
def test_position_ids_are_used(combo):
    """The invariance tests above have teeth: non-uniform position changes do change the logits."""
    model = model_for(combo, "full")
    ids = tokens(1, 10)
    with torch.no_grad():
        base = model(ids).logits
        other = model(ids, position_ids=torch.tensor([[0, 2, 3, 4, 6, 7, 8, 10, 11, 13]])).logits
    assert not torch.allclose(other, base, atol=1e-3)


def count_fire_calls(model: HfEmbedForCausalLM, monkeypatch) -> list[tuple[int, int, int, int]]:
    """Record (module number, q_offset, q_len, k_len) of every FIRE bias computation."""
    calls = []
    modules = [m for m in model.modules() if isinstance(m, FireBias)]
    for number, module in enumerate(modules):

        def spy(q_offset, q_len, k_len, _module=module, _number=number):
            calls.append((_number, q_offset, q_len, k_len))
            return FireBias.bias(_module, q_offset, q_len, k_len)

        monkeypatch.setattr(module, "bias", spy)
    return calls


@pytest.mark.parametrize("combo", ["fire", "shared_fire"])
def test_fire_bias_once_per_module_and_only_new_rows_while_decoding(combo, monkeypatch):
    model = model_for(combo, "full")
    shared = model.config.shared_fire_embeddings
    fire_names = {name.rsplit(".", 1)[0] for name in model.state_dict() if ".fire." in name or "fire.c" in name}
    expected_names = {"transformer.fire"} if shared else {f"transformer.h.{i}.attn.fire" for i in range(2)}
    assert {name.split(".mlp")[0] for name in fire_names} == expected_names
    if shared:
        assert all(isinstance(block.attn.fire, NoBias) for block in model.transformer.h)

    calls = count_fire_calls(model, monkeypatch)
    modules = 1 if shared else model.config.n_layer
    ids = tokens(2, 9)
    with torch.no_grad():
        prefill = model(ids[:, :7], use_cache=True)
        assert sorted(calls) == [(m, 0, 7, 7) for m in range(modules)]
        calls.clear()
        model(ids[:, 7:8], cache=prefill.cache, use_cache=True)
        assert sorted(calls) == [(m, 7, 1, 8) for m in range(modules)]


@pytest.mark.parametrize("combo", [name for name in COMBOS if "abs" not in name])
def test_relative_models_run_past_block_size(combo):
    model = model_for(combo, "full")
    long = tokens(1, 8 * BLOCK)
    with torch.no_grad():
        assert torch.isfinite(model(long).logits).all()
    prompt = tokens(1, BLOCK - 3)
    cached = greedy(model, prompt, 8)
    uncached = greedy(model, prompt, 8, use_cache=False)
    assert cached.sequences.shape[1] == BLOCK + 5
    torch.testing.assert_close(torch.stack(cached.logits), torch.stack(uncached.logits), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("combo", [name for name in COMBOS if "abs" in name])
def test_absolute_positions_refuse_input_past_block_size(combo):
    model = model_for(combo, "full")
    fix = r"block_size=24.*use_abs_pos_embeddings.*(shorten|larger block_size|without absolute positions)"
    with torch.no_grad():
        model(tokens(1, BLOCK))  # exactly block_size is fine
        with pytest.raises(ValueError, match=fix):
            model(tokens(1, BLOCK + 1))
        prefill = model(tokens(1, BLOCK), use_cache=True)
        with pytest.raises(ValueError, match=fix):
            model(tokens(1, 1), cache=prefill.cache, use_cache=True)
    with pytest.raises(ValueError, match=fix):
        greedy(model, tokens(1, BLOCK - 2), 5)


INVALID = [
    (dict(rope_variant="alibi"), r"rope_variant='alibi'.*\['rope', 'soap'\]"),
    (dict(use_rotary_embeddings=True, rope_length=3), r"rope_length=3.*even integer in \[2, 8\]"),
    (dict(use_rotary_embeddings=True, rope_length=10), r"rope_length=10.*\[2, 8\]"),
    (dict(use_rotary_embeddings=True, rope_length=0), r"rope_length=0"),
    (dict(use_rotary_embeddings=True, rope_length=-2), r"rope_length=-2"),
    (dict(use_rotary_embeddings=True, rope_length=4.0), r"rope_length=4.0.*int"),
    (dict(use_rotary_embeddings=True, rope_length=True), r"rope_length=True.*int"),
    (dict(use_rotary_embeddings=True, n_embd=36, n_head=4), r"rope_length=None.*even head dimension.*9"),
    (dict(use_rotary_embeddings=True, rope_theta=0.0), r"rope_theta=0.0.*> 0"),
    (dict(use_rotary_embeddings=True, rope_theta=float("inf")), r"rope_theta=inf.*finite"),
    (dict(use_rotary_embeddings=True, rope_variant="soap", sym_rot_num_angles=0), r"sym_rot_num_angles=0.*>= 1"),
    (dict(use_abs_pos_embeddings="yes"), r"use_abs_pos_embeddings='yes'.*bool"),
    (dict(shared_fire_embeddings=True), r"shared_fire_embeddings=True.*use_fire_embeddings"),
    (dict(use_fire_embeddings=True, fire_mlp_width=0), r"fire_mlp_width=0.*>= 1"),
    (dict(use_fire_embeddings=True, fire_num_hidden_layers=0), r"fire_num_hidden_layers=0.*>= 1"),
    (dict(use_fire_embeddings=True, fire_init_L=0.0), r"fire_init_L=0.0.*> 0"),
    (dict(use_fire_embeddings=True, fire_init_L=-5.0), r"fire_init_L=-5.0"),
    (dict(use_fire_embeddings=True, fire_init_L=float("inf")), r"fire_init_L=inf.*finite"),
    (dict(use_fire_embeddings=True, fire_log_bias=0.0), r"fire_log_bias=0.0.*> 0"),
    (dict(use_fire_embeddings=True, fire_init_c=float("nan")), r"fire_init_c=nan.*finite"),
    (dict(use_fire_embeddings=True, fire_outermost_sigma=1), r"fire_outermost_sigma=1.*bool"),
]


@pytest.mark.parametrize("overrides,message", INVALID, ids=[str(sorted(o.items())) for o, _ in INVALID])
def test_invalid_position_arguments_raise(overrides, message):
    kwargs = dict(vocab_size=97, n_embd=32, n_head=4, n_layer=1)
    kwargs.update(overrides)
    with pytest.raises(ValueError, match=message):
        HfEmbedConfig(**kwargs)


def test_every_position_mechanism_at_once_is_legal():
    config = HfEmbedConfig(
        vocab_size=97, n_embd=32, n_head=4, n_layer=1, **ROPE, **SHARED_FIRE, use_abs_pos_embeddings=True
    )
    assert config.use_abs_pos_embeddings and config.use_rotary_embeddings and config.use_fire_embeddings
