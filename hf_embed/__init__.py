"""hf_embed: a Hugging Face Transformers model for research on the embedding layers of language models.

`import hf_embed` registers `HfEmbedConfig`, `HfEmbedModel` and `HfEmbedForCausalLM` with the Auto classes.
Tools outside the modeling code (training callback, conversions) load on first use.
"""

import importlib

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .configuration_hf_embed import HfEmbedConfig
from .modeling_hf_embed import HfEmbedForCausalLM, HfEmbedModel

AutoConfig.register(HfEmbedConfig.model_type, HfEmbedConfig, exist_ok=True)
AutoModel.register(HfEmbedConfig, HfEmbedModel, exist_ok=True)
AutoModelForCausalLM.register(HfEmbedConfig, HfEmbedForCausalLM, exist_ok=True)
# save_pretrained copies the modeling code beside the weights, for trust_remote_code users
HfEmbedConfig.register_for_auto_class("AutoConfig")
HfEmbedModel.register_for_auto_class("AutoModel")
HfEmbedForCausalLM.register_for_auto_class("AutoModelForCausalLM")

# public name -> module that defines it, imported on first access
_LAZY = {
    "EmbeddingExportCallback": "callbacks",
    "convert_gpt2": "conversion",
    "convert_nanogpt": "nanogpt",
    "factorize_embeddings": "factorize",
    "embedding_parameter_count": "embeddings",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'hf_embed' has no attribute {name!r}")


__all__ = ["HfEmbedConfig", "HfEmbedModel", "HfEmbedForCausalLM", *_LAZY]
