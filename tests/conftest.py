"""Shared test set-up: every Hugging Face cache in a temporary folder, offline, and small model builders."""

import os
import tempfile

# Read by huggingface_hub / transformers at import time: set before anything imports them.
_HF_HOME = tempfile.mkdtemp(prefix="hf_embed-tests-hf-home-")
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

import hf_embed  # noqa: E402, F401  (registers the Auto classes)
from hf_embed import HfEmbedConfig, HfEmbedForCausalLM  # noqa: E402

# Tiny models run fastest on one thread, and the suite stays fast when other work shares the cores.
torch.set_num_threads(1)


def tiny_config(**overrides) -> HfEmbedConfig:
    """A model small enough for a unit test: V=97, d=32, 2 layers, 4 heads, 64 positions."""
    kwargs = dict(vocab_size=97, n_embd=32, n_layer=2, n_head=4, block_size=64, pad_token_id=0, eos_token_id=1)
    kwargs.update(overrides)
    return HfEmbedConfig(**kwargs)


def tiny_model(seed: int = 0, **overrides) -> HfEmbedForCausalLM:
    torch.manual_seed(seed)
    return HfEmbedForCausalLM(tiny_config(**overrides)).eval()


@pytest.fixture
def hf_home() -> str:
    return _HF_HOME
