"""HfEmbedConfig: the seed's arguments and defaults, the README reference, aliases, strict JSON, every ValueError."""

import json
import math
import re
import typing
from pathlib import Path

import pytest
from conftest import tiny_config

from hf_embed import HfEmbedConfig
from hf_embed.configuration_hf_embed import INIT_VARIANT_CHOICES, ROPE_VARIANT_CHOICES

README = Path(__file__).resolve().parent.parent / "README.md"

# The user's document ("1.2 Embeddings"): argument -> (type, default), copied here so the tests need nothing else.
SEED = {
    "n_embd_wte": (int, None),
    "n_embd_wte_scale_tying": (bool, True),
    "wte_weight_tying": (bool, True),
    "import_wte_npy": (str, None),
    "export_wte_npy": (str, None),
    "export_wte_each_eval": (bool, False),
    "import_wte_freeze": (bool, False),
    "import_scale_matrices_npz": (str, None),
    "export_scale_matrices_npz": (str, None),
    "export_scale_matrices_each_eval": (bool, False),
    "import_scale_matrices_freeze": (bool, False),
    "use_abs_pos_embeddings": (bool, True),
    "use_rotary_embeddings": (bool, False),
    "rope_variant": (str, "rope"),
    "rope_length": (int, None),
    "use_fire_embeddings": (bool, False),
    "shared_fire_embeddings": (bool, False),
    "init_variant": (str, "gaussian"),
    "init_scale": (float, 0.01),
    "init_wte_npy": (str, "wte.npy"),
    "init_radius": (float, 1.0),
    "gaussian_min_norm": (float, 0.0),
    "gaussian_max_norm": (float, math.inf),
    "embedding_mean_init": (float, 0.0),
    "embedding_std_init": (float, 0.02),
}
SEED_INIT_VARIANTS = {
    "gaussian", "onehot", "hypercube", "numpy_import", "rand_hypercube", "angle_hypersphere", "unique_hypercube",
    "gaussian_norm_range",
}  # fmt: skip


def _base_type(hint) -> type:
    """`int | None` -> int, `Literal["a", "b"]` -> str, `float` -> float."""
    if typing.get_origin(hint) is typing.Literal:
        return type(typing.get_args(hint)[0])
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


@pytest.mark.parametrize("name", sorted(SEED))
def test_every_seed_argument_is_a_field_with_the_seed_type_and_default(name):
    fields = {f.name: f for f in HfEmbedConfig.argument_fields()}
    expected_type, expected_default = SEED[name]
    assert name in fields
    assert _base_type(fields[name].type) is expected_type
    assert getattr(HfEmbedConfig(), name) == expected_default


def test_choice_lists_match_the_seed():
    assert set(ROPE_VARIANT_CHOICES) == {"rope", "soap"}
    assert set(INIT_VARIANT_CHOICES) == SEED_INIT_VARIANTS


def _readme_reference() -> dict[str, tuple[str, str]]:
    text = README.read_text()
    section = text.split("## Arguments reference", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| (\w+) \| ([^|]+) \|", section, flags=re.MULTILINE)
    return {name: (type_name, default.strip()) for name, type_name, default in rows}


_LITERALS = {"None": None, "True": True, "False": False, "inf": math.inf}


def _parse_default(text: str):
    return _LITERALS[text] if text in _LITERALS else json.loads(text)


def test_readme_reference_documents_every_field_and_nothing_else():
    documented = _readme_reference()
    fields = {f.name: f for f in HfEmbedConfig.argument_fields()}
    assert set(documented) == set(fields)
    defaults = HfEmbedConfig()
    for name, (type_name, default) in documented.items():
        assert type_name == _base_type(fields[name].type).__name__, name
        assert _parse_default(default) == getattr(defaults, name), name


def test_aliases_follow_hugging_face_names():
    config = HfEmbedConfig(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=99)
    assert (config.n_embd, config.n_layer, config.n_head, config.block_size) == (64, 3, 4, 99)
    untied = HfEmbedConfig(tie_word_embeddings=False)
    assert untied.wte_weight_tying is False and untied.tie_word_embeddings is False
    untied.wte_weight_tying = True
    assert untied.tie_word_embeddings is True


def test_config_json_is_strict_and_infinity_reads_back(tmp_path):
    config = tiny_config(init_variant="gaussian_norm_range", gaussian_min_norm=0.1)
    config.save_pretrained(tmp_path)
    text = (tmp_path / "config.json").read_text()
    json.loads(text, parse_constant=lambda token: pytest.fail(f"non-strict JSON token {token}"))
    loaded = HfEmbedConfig.from_pretrained(tmp_path)
    assert loaded.gaussian_max_norm == math.inf
    assert loaded.to_dict() == config.to_dict()


def test_config_json_round_trips_every_field(tmp_path):
    config = tiny_config(n_embd_wte=8, n_embd_wte_scale_tying=False, use_rotary_embeddings=True, rope_length=4,
                         rope_variant="soap", use_fire_embeddings=True, shared_fire_embeddings=True,
                         init_variant="angle_hypersphere", init_radius=2.5, export_wte_npy="w.npy")  # fmt: skip
    config.save_pretrained(tmp_path)
    loaded = HfEmbedConfig.from_pretrained(tmp_path)
    for field in HfEmbedConfig.argument_fields():
        assert getattr(loaded, field.name) == getattr(config, field.name), field.name


def test_auto_map_names_all_three_classes():
    assert HfEmbedConfig().auto_map == {
        "AutoConfig": "configuration_hf_embed.HfEmbedConfig",
        "AutoModel": "modeling_hf_embed.HfEmbedModel",
        "AutoModelForCausalLM": "modeling_hf_embed.HfEmbedForCausalLM",
    }


def test_integers_are_accepted_for_float_fields():
    config = tiny_config(init_scale=1, rope_theta=500)
    assert isinstance(config.init_scale, float) and config.init_scale == 1.0


# (overrides, argument the message must name, a fragment of what is allowed)
BAD_CONFIGS = [
    (dict(vocab_size=0), "vocab_size", ">= 1"),
    (dict(n_embd=0), "n_embd", ">= 1"),
    (dict(n_layer=0), "n_layer", ">= 1"),
    (dict(n_head=0), "n_head", ">= 1"),
    (dict(block_size=0), "block_size", ">= 1"),
    (dict(n_embd=30, n_head=4), "n_head", "multiple"),
    (dict(dropout=1.0), "dropout", "[0, 1)"),
    (dict(dropout=-0.1), "dropout", "[0, 1)"),
    (dict(layer_norm_epsilon=0.0), "layer_norm_epsilon", "> 0"),
    (dict(initializer_range=-1.0), "initializer_range", ">= 0"),
    (dict(n_layer=2.5), "n_layer", "int"),
    (dict(use_cache=1), "use_cache", "bool"),
    (dict(bias="yes"), "bias", "bool"),
    (dict(n_embd_wte=0), "n_embd_wte", ">= 1"),
    (dict(n_embd_wte=-3), "n_embd_wte", ">= 1"),
    (dict(n_embd_wte=8.0), "n_embd_wte", "int"),
    (dict(import_scale_matrices_npz="s.npz"), "import_scale_matrices_npz", "n_embd_wte"),
    (dict(export_scale_matrices_npz="s.npz"), "export_scale_matrices_npz", "n_embd_wte"),
    (dict(export_scale_matrices_each_eval=True), "export_scale_matrices_each_eval", "n_embd_wte"),
    (dict(import_scale_matrices_freeze=True), "import_scale_matrices_freeze", "n_embd_wte"),
    (dict(export_wte_each_eval=True), "export_wte_each_eval", "export_wte_npy"),
    (dict(rope_variant="alibi"), "rope_variant", "['rope', 'soap']"),
    (dict(use_rotary_embeddings=True, rope_length=3), "rope_length", "even"),
    (dict(use_rotary_embeddings=True, rope_length=0), "rope_length", "even"),
    (dict(use_rotary_embeddings=True, rope_length=10), "rope_length", "[2, 8]"),
    (dict(use_rotary_embeddings=True, n_embd=36, n_head=4), "rope_length", "even head dimension"),
    (dict(use_rotary_embeddings=True, rope_theta=0.0), "rope_theta", "> 0"),
    (dict(use_rotary_embeddings=True, rope_variant="soap", sym_rot_num_angles=0), "sym_rot_num_angles", ">= 1"),
    (dict(shared_fire_embeddings=True), "shared_fire_embeddings", "use_fire_embeddings"),
    (dict(use_fire_embeddings=True, fire_mlp_width=0), "fire_mlp_width", ">= 1"),
    (dict(use_fire_embeddings=True, fire_num_hidden_layers=0), "fire_num_hidden_layers", ">= 1"),
    (dict(use_fire_embeddings=True, fire_init_L=0.0), "fire_init_L", "> 0"),
    (dict(use_fire_embeddings=True, fire_log_bias=-1.0), "fire_log_bias", "> 0"),
    (dict(use_fire_embeddings=True, fire_init_c=math.nan), "fire_init_c", "finite"),
    (dict(init_variant="xavier"), "init_variant", "gaussian_norm_range"),
    (dict(init_variant="onehot"), "init_variant", "vocab_size 97"),
    (dict(init_variant="onehot", vocab_size=40, n_embd_wte=8), "n_embd_wte", "dimension 8"),
    (dict(init_variant="hypercube", n_embd_wte=6), "init_variant", "2**6 = 64 < vocab_size 97"),
    (dict(init_variant="unique_hypercube", n_embd_wte=7), "init_variant", "2**6 = 64"),
    (dict(init_variant="angle_hypersphere", init_radius=0.0), "init_radius", "> 0"),
    (dict(init_variant="gaussian_norm_range", gaussian_min_norm=-1.0), "gaussian_min_norm", ">= 0"),
    (
        dict(init_variant="gaussian_norm_range", gaussian_min_norm=2.0, gaussian_max_norm=1.0),
        "gaussian_max_norm",
        ">= gaussian_min_norm",
    ),  # fmt: skip
    (dict(init_variant="gaussian_norm_range", embedding_std_init=0.0), "embedding_std_init", "> 0"),
    (dict(embedding_std_init=-0.1), "embedding_std_init", ">= 0"),
    (dict(init_scale=math.inf), "init_scale", "finite"),
    (dict(init_variant="numpy_import", init_wte_npy=""), "init_wte_npy", "path"),
]


@pytest.mark.parametrize(("overrides", "argument", "allowed"), BAD_CONFIGS, ids=[c[1] for c in BAD_CONFIGS])
def test_invalid_values_raise_value_error_naming_argument_value_and_allowed(overrides, argument, allowed):
    with pytest.raises(ValueError) as raised:
        tiny_config(**overrides)
    message = str(raised.value)
    assert argument in message
    assert allowed in message
    if argument in overrides and not (isinstance(overrides[argument], float) and math.isnan(overrides[argument])):
        assert repr(overrides[argument]) in message or str(overrides[argument]) in message


def test_check_arguments_catches_values_set_after_construction():
    config = tiny_config()
    config.rope_variant = "nope"
    with pytest.raises(ValueError, match="rope_variant"):
        config.check_arguments()
