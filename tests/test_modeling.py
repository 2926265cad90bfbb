"""The decoder against transformers' GPT-2 (the oracle), Auto classes, remote code, generation, training paths."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import tiny_config, tiny_model
from safetensors import safe_open
from torch.testing import assert_close
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from hf_embed import HfEmbedForCausalLM, HfEmbedModel, convert_gpt2

GPT2_SIZES = [
    dict(vocab_size=211, n_embd=48, n_layer=2, n_head=4, n_positions=64),
    dict(vocab_size=307, n_embd=96, n_layer=3, n_head=6, n_positions=128, tie_word_embeddings=False),
]


def _gpt2(size: dict, attn: str, seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(**size, bos_token_id=1, eos_token_id=1, attn_implementation=attn)
    model = GPT2LMHeadModel(config).eval()
    if not config.tie_word_embeddings:  # make an untied head really differ from the table
        torch.nn.init.normal_(model.lm_head.weight, std=0.05)
    return model


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("size", GPT2_SIZES, ids=["small-tied", "larger-untied"])
def test_convert_gpt2_gives_gpt2_logits(size, attn):
    gpt2 = _gpt2(size, attn)
    ours = convert_gpt2(gpt2)
    assert ours.config._attn_implementation == attn
    ids = torch.randint(0, size["vocab_size"], (3, 17), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, :6] = 0  # left padding
    mask[2, 12:] = 0  # right padding
    with torch.no_grad():
        assert_close(ours(ids).logits, gpt2(ids).logits, atol=1e-5, rtol=0)
        got, want = ours(ids, attention_mask=mask).logits, gpt2(ids, attention_mask=mask).logits
    keep = mask.bool()  # padded query rows are meaningless in both
    assert_close(got[keep], want[keep], atol=1e-5, rtol=0)
    assert (ours.lm_head.weight is ours.transformer.wte.weight) == size.get("tie_word_embeddings", True)


def test_convert_gpt2_loss_and_gradients_match():
    gpt2 = _gpt2(GPT2_SIZES[0], "sdpa")
    ours = convert_gpt2(gpt2)
    ids = torch.randint(0, 211, (2, 12))
    loss_gpt2, loss_ours = gpt2(ids, labels=ids).loss, ours(ids, labels=ids).loss
    assert_close(loss_ours, loss_gpt2, atol=1e-6, rtol=0)
    loss_gpt2.backward()
    loss_ours.backward()
    assert_close(ours.transformer.wte.weight.grad, gpt2.transformer.wte.weight.grad, atol=1e-6, rtol=1e-5)
    gpt2_qkv = gpt2.transformer.h[1].attn.c_attn.weight.grad.t()  # Conv1D stores (in, out)
    assert_close(ours.transformer.h[1].attn.c_attn.weight.grad, gpt2_qkv, atol=1e-6, rtol=1e-5)


def test_eager_and_sdpa_agree():
    model = tiny_model()
    ids = torch.randint(0, 97, (2, 20))
    with torch.no_grad():
        sdpa = model(ids).logits
        model.config._attn_implementation = "eager"
        eager = model(ids).logits
    assert_close(sdpa, eager, atol=1e-5, rtol=0)


def test_loss_is_shifted_cross_entropy_and_ignores_minus_100():
    model = tiny_model()
    ids = torch.randint(0, 97, (2, 10))
    labels = ids.clone()
    labels[:, :3] = -100
    out = model(ids, labels=labels)
    logits = out.logits[:, :-1].reshape(-1, 97)
    expected = torch.nn.functional.cross_entropy(logits, labels[:, 1:].reshape(-1), ignore_index=-100)
    assert_close(out.loss, expected)


def test_logits_to_keep_returns_the_last_positions():
    model = tiny_model()
    ids = torch.randint(0, 97, (2, 10))
    with torch.no_grad():
        full = model(ids).logits
        last = model(ids, logits_to_keep=1).logits
    assert last.shape == (2, 1, 97)
    assert_close(last, full[:, -1:])


def test_base_model_returns_model_space_hidden_states_and_optional_outputs():
    model = tiny_model()
    ids = torch.randint(0, 97, (1, 7))
    out = model.transformer(ids, output_hidden_states=True)
    assert out.last_hidden_state.shape == (1, 7, 32)
    assert len(out.hidden_states) == 2 + 1


def test_gradient_checkpointing_gives_the_same_gradients():
    reference, checkpointed = tiny_model(seed=3), tiny_model(seed=3)
    checkpointed.activation_checkpointing_enable()
    ids = torch.randint(0, 97, (2, 16))
    for model in (reference, checkpointed):
        model.train()
        model(ids, labels=ids).loss.backward()
    for (name, a), b in zip(reference.named_parameters(), checkpointed.parameters()):
        assert_close(b.grad, a.grad, msg=name)


def test_inputs_longer_than_block_size_are_refused_with_absolute_positions():
    model = tiny_model(block_size=16)
    with pytest.raises(ValueError, match="block_size=16"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_save_and_load_with_auto_classes(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    assert {"model.safetensors", "config.json", "modeling_hf_embed.py", "configuration_hf_embed.py"} <= set(
        os.listdir(tmp_path)
    )
    assert AutoConfig.from_pretrained(tmp_path).model_type == "hf_embed"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert isinstance(loaded, HfEmbedForCausalLM)
    assert isinstance(AutoModel.from_pretrained(tmp_path), HfEmbedModel)
    ids = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    assert loaded.lm_head.weight.data_ptr() == loaded.transformer.wte.weight.data_ptr()
    with safe_open(tmp_path / "model.safetensors", "pt") as stored:
        assert "transformer.wte.weight" in stored.keys()
        assert "lm_head.weight" not in stored.keys()


def test_untied_head_is_stored_and_loaded_separately(tmp_path):
    model = tiny_model(wte_weight_tying=False)
    assert model.lm_head.weight is not model.transformer.wte.weight
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert loaded.lm_head.weight is not loaded.transformer.wte.weight
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)


REMOTE_SCRIPT = textwrap.dedent(
    """
    import json, sys, importlib.abc

    class BlockHfEmbed(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "hf_embed" or name.startswith("hf_embed."):
                raise ImportError("hf_embed is blocked in this process")

    sys.meta_path.insert(0, BlockHfEmbed())
    sys.path = [p for p in sys.path if p not in ("", ".")]
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    folder, ids = sys.argv[1], torch.tensor(json.loads(sys.argv[2]))
    try:
        import hf_embed  # noqa: F401
        raise SystemExit("hf_embed should not be importable here")
    except ImportError:
        pass
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    assert AutoConfig.from_pretrained(folder, trust_remote_code=True).model_type == "hf_embed"
    base = AutoModel.from_pretrained(folder, trust_remote_code=True)
    assert type(base).__name__ == "HfEmbedModel"
    assert model.lm_head.weight is model.transformer.wte.weight
    with torch.no_grad():
        logits = model(ids).logits
        generated = model.generate(ids[:, :4], max_new_tokens=5, do_sample=False)
    print(json.dumps({"logits": logits.tolist(), "generated": generated.tolist()}))
    """
)


def test_saved_folder_loads_with_trust_remote_code_where_hf_embed_is_not_importable(tmp_path, hf_home):
    model = tiny_model(use_rotary_embeddings=True, use_fire_embeddings=True, n_embd_wte=16)
    model.save_pretrained(tmp_path / "model")
    ids = torch.randint(2, 97, (2, 8))
    env = {**os.environ, "HF_HOME": hf_home, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_SCRIPT, str(tmp_path / "model"), json.dumps(ids.tolist())],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    remote = json.loads(result.stdout.strip().splitlines()[-1])
    with torch.no_grad():
        assert_close(torch.tensor(remote["logits"]), model(ids).logits, atol=0, rtol=0)
        local = model.generate(ids[:, :4], max_new_tokens=5, do_sample=False)
    assert remote["generated"] == local.tolist()


def test_generate_with_cache_equals_without():
    model = tiny_model()
    ids = torch.randint(2, 97, (2, 6))
    with torch.no_grad():
        cached = model.generate(ids, max_new_tokens=12, do_sample=False, use_cache=True)
        uncached = model.generate(ids, max_new_tokens=12, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_incremental_decoding_matches_the_full_forward():
    model = tiny_model()
    ids = torch.randint(2, 97, (2, 12))
    with torch.no_grad():
        full = model(ids).logits
        first = model(ids[:, :7], use_cache=True)
        step = model(ids[:, 7:], cache=first.cache, use_cache=True)
    assert_close(step.logits, full[:, 7:], atol=1e-5, rtol=0)


def test_left_padded_batch_generates_what_each_row_generates_alone():
    model = tiny_model()
    rows = [torch.randint(2, 97, (n,), generator=torch.Generator().manual_seed(n)) for n in (3, 7, 5)]
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = row
        mask[i, width - len(row) :] = 1
    with torch.no_grad():
        batch = model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False)
        for i, row in enumerate(rows):
            alone = model.generate(row[None], max_new_tokens=8, do_sample=False)
            assert batch[i, width:].tolist() == alone[0, len(row) :].tolist()


def test_dtype_conversion_keeps_ties_and_runs_in_bfloat16():
    model = tiny_model(n_embd_wte=8).to(torch.bfloat16)
    assert model.lm_head.weight is model.transformer.wte.weight
    with torch.no_grad():
        logits = model(torch.randint(0, 97, (1, 10))).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()


def test_tiny_config_helper_is_valid():
    assert tiny_config().head_dim == 8
