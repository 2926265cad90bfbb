"""HfEmbedConfig: every embedding argument of the seed document, the GPT-2 base fields, and their checks.

This module imports no torch, so a config can be built, checked and saved anywhere.
"""

import dataclasses
import math
import types
import typing
from typing import Literal

from transformers import PretrainedConfig

RopeVariant = Literal["rope", "soap"]
InitVariant = Literal[
    "gaussian",
    "onehot",
    "hypercube",
    "numpy_import",
    "rand_hypercube",
    "angle_hypersphere",
    "unique_hypercube",
    "gaussian_norm_range",
]
ROPE_VARIANT_CHOICES: tuple[str, ...] = typing.get_args(RopeVariant)
INIT_VARIANT_CHOICES: tuple[str, ...] = typing.get_args(InitVariant)

AUTO_MAP = {
    "AutoConfig": "configuration_hf_embed.HfEmbedConfig",
    "AutoModel": "modeling_hf_embed.HfEmbedModel",
    "AutoModelForCausalLM": "modeling_hf_embed.HfEmbedForCausalLM",
}

# Fields that only make sense with a factorized table (`n_embd_wte`): name -> value that means "unused".
_SCALE_ARGUMENTS = {
    "import_scale_matrices_npz": None,
    "export_scale_matrices_npz": None,
    "export_scale_matrices_each_eval": False,
    "import_scale_matrices_freeze": False,
}


class HfEmbedConfig(PretrainedConfig):
    r"""Configuration of an hf_embed decoder: GPT-2 blocks with a researchable embedding stack.

    Every embedding argument keeps the name, type and default of the seed document (`n_embd_wte`,
    `use_rotary_embeddings`, `init_variant`, ...). Standard names work as aliases: `hidden_size` is `n_embd`,
    `num_hidden_layers` is `n_layer`, `num_attention_heads` is `n_head`, `max_position_embeddings` is
    `block_size`, and `tie_word_embeddings` is `wte_weight_tying`.

    Invalid values and combinations raise `ValueError` naming the argument, the value and what is allowed.
    """

    model_type = "hf_embed"
    attribute_map = {
        "hidden_size": "n_embd",
        "num_hidden_layers": "n_layer",
        "num_attention_heads": "n_head",
        "max_position_embeddings": "block_size",
        "tie_word_embeddings": "wte_weight_tying",
    }

    # --- base architecture (GPT-2) ---
    vocab_size: int = 50257
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    block_size: int = 1024
    activation_function: str = "gelu_new"
    dropout: float = 0.0
    bias: bool = True
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    use_cache: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None

    # --- word token embeddings ---
    n_embd_wte: int | None = None
    n_embd_wte_scale_tying: bool = True
    wte_weight_tying: bool = True
    import_wte_npy: str | None = None
    export_wte_npy: str | None = None
    export_wte_each_eval: bool = False
    import_wte_freeze: bool = False
    import_scale_matrices_npz: str | None = None
    export_scale_matrices_npz: str | None = None
    export_scale_matrices_each_eval: bool = False
    import_scale_matrices_freeze: bool = False

    # --- positional embeddings ---
    use_abs_pos_embeddings: bool = True
    use_rotary_embeddings: bool = False
    rope_variant: RopeVariant = "rope"
    rope_length: int | None = None
    rope_theta: float = 10000.0
    sym_rot_num_angles: int = 512
    use_fire_embeddings: bool = False
    shared_fire_embeddings: bool = False
    fire_mlp_width: int = 32
    fire_num_hidden_layers: int = 1
    fire_init_c: float = 0.1
    fire_init_L: float = 512.0
    fire_log_bias: float = 1.0
    fire_outermost_sigma: bool = False

    # --- initialisation of the token table ---
    init_variant: InitVariant = "gaussian"
    init_scale: float = 0.01
    init_wte_npy: str = "wte.npy"
    init_radius: float = 1.0
    gaussian_min_norm: float = 0.0
    gaussian_max_norm: float = math.inf
    embedding_mean_init: float = 0.0
    embedding_std_init: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if not getattr(self, "auto_map", None):  # every Auto class finds the code saved beside the weights
            self.auto_map = dict(AUTO_MAP)
        self.check_arguments()

    # ------------------------------------------------------------------ checks
    @classmethod
    def argument_fields(cls) -> list[dataclasses.Field]:
        """The fields this class declares (the seed arguments, the base and extra fields), in order."""
        own = set(cls.__annotations__)
        return [f for f in dataclasses.fields(cls) if f.name in own]

    def check_arguments(self) -> None:
        """Check every value and combination that needs no file; raise `ValueError` on the first bad one.

        Called by the constructor; call it again after changing attributes by hand (as `--config_overrides` does).
        """
        self._check_types()
        self._check_base()
        self._check_token_table()
        self._check_positions()
        self._check_init()

    def _check_types(self) -> None:
        hints = {f.name: f.type for f in self.argument_fields()}
        for field in self.argument_fields():
            value = getattr(self, field.name)
            allowed = _allowed_types(hints[field.name])
            if isinstance(value, bool) and bool not in allowed:
                raise _error(field.name, value, f"a value of type {_type_names(allowed)}")
            if float in allowed and isinstance(value, int) and not isinstance(value, bool):
                setattr(self, field.name, float(value))
                continue
            if float in allowed and isinstance(value, dict):  # {"__float__": "Infinity"}, as to_json_string writes
                value = self._decode_special_floats(value)
                if isinstance(value, float):
                    setattr(self, field.name, value)
                    continue
            if not isinstance(value, allowed):
                raise _error(field.name, value, f"a value of type {_type_names(allowed)}")
            choices = _literal_choices(hints[field.name])
            if choices and value not in choices:
                raise _error(field.name, value, f"one of {list(choices)}")

    def _check_base(self) -> None:
        for name in ("vocab_size", "n_embd", "n_layer", "n_head", "block_size"):
            _require(self, name, getattr(self, name) >= 1, "an integer >= 1")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"n_embd={self.n_embd} must be divisible by n_head={self.n_head} (allowed: n_embd a multiple of n_head)"
            )
        _require(self, "dropout", 0.0 <= self.dropout < 1.0, "a float in [0, 1)")
        _require(self, "layer_norm_epsilon", 0 < self.layer_norm_epsilon < math.inf, "a finite float > 0")
        _require(self, "initializer_range", 0 <= self.initializer_range < math.inf, "a finite float >= 0")

    def _check_token_table(self) -> None:
        if self.n_embd_wte is not None:
            _require(self, "n_embd_wte", self.n_embd_wte >= 1, "None or an integer >= 1")
        for name, unused in _SCALE_ARGUMENTS.items():
            if self.n_embd_wte is None and getattr(self, name) != unused:
                raise ValueError(
                    f"{name}={getattr(self, name)!r} needs a factorized token table: set n_embd_wte "
                    f"(an integer >= 1); scale matrices exist only when n_embd_wte is set"
                )
        for each_eval, path, example in (
            ("export_wte_each_eval", "export_wte_npy", "wte.npy"),
            ("export_scale_matrices_each_eval", "export_scale_matrices_npz", "scales.npz"),
        ):
            if getattr(self, each_eval) and not getattr(self, path):
                raise ValueError(
                    f"{each_eval}=True needs {path} (a path such as {example!r}): snapshots are named after it"
                )

    def _check_positions(self) -> None:
        head_dim = self.n_embd // self.n_head
        if self.use_rotary_embeddings:
            if self.rope_length is None:
                _require(self, "rope_length", head_dim % 2 == 0, f"an even head dimension (n_embd/n_head = {head_dim})")
            else:
                _require(
                    self,
                    "rope_length",
                    self.rope_length % 2 == 0 and 2 <= self.rope_length <= head_dim,
                    f"None or an even integer in [2, {head_dim}] (the head dimension n_embd/n_head)",
                )
            _require(self, "rope_theta", self.rope_theta > 0 and math.isfinite(self.rope_theta), "a finite float > 0")
            _require(self, "sym_rot_num_angles", self.sym_rot_num_angles >= 1, "an integer >= 1")
        if self.shared_fire_embeddings and not self.use_fire_embeddings:
            raise ValueError(
                "shared_fire_embeddings=True needs use_fire_embeddings=True (allowed: share FIRE only when FIRE is on)"
            )
        if self.use_fire_embeddings:
            _require(self, "fire_mlp_width", self.fire_mlp_width >= 1, "an integer >= 1")
            _require(self, "fire_num_hidden_layers", self.fire_num_hidden_layers >= 1, "an integer >= 1")
            _require(
                self, "fire_init_L", self.fire_init_L > 0 and math.isfinite(self.fire_init_L), "a finite float > 0"
            )
            _require(
                self,
                "fire_log_bias",
                self.fire_log_bias > 0 and math.isfinite(self.fire_log_bias),
                "a finite float > 0",
            )
            _require(self, "fire_init_c", math.isfinite(self.fire_init_c), "a finite float")

    def _check_init(self) -> None:
        rows, dim = self.vocab_size, self.token_table_dim
        variant = self.init_variant
        for name in ("init_scale", "embedding_mean_init", "embedding_std_init", "init_radius", "gaussian_min_norm"):
            _require(self, name, math.isfinite(getattr(self, name)), "a finite float")
        _require(self, "embedding_std_init", self.embedding_std_init >= 0, "a float >= 0")
        needs = {
            "onehot": (dim >= rows, f"a table dimension >= vocab_size, got dimension {dim} < vocab_size {rows}"),
            "hypercube": (
                dim >= 64 or 2**dim >= rows,
                f"2**dimension >= vocab_size, got 2**{dim} = {2**dim} < vocab_size {rows}",
            ),
            "unique_hypercube": (
                dim >= 64 or 2 ** (dim - 1) >= rows,
                f"vocab_size <= 2**(dimension-1), got vocab_size {rows} > 2**{dim - 1} = {2 ** (dim - 1)}",
            ),
        }
        if variant in needs and not needs[variant][0]:
            raise ValueError(
                f"init_variant={variant!r} needs {needs[variant][1]} (the table dimension is "
                f"{'n_embd_wte' if self.n_embd_wte else 'n_embd'}); choose another init_variant or a larger dimension"
            )
        if variant == "angle_hypersphere":
            _require(self, "init_radius", self.init_radius > 0, "a float > 0")
        if variant == "gaussian_norm_range":
            _require(self, "gaussian_min_norm", self.gaussian_min_norm >= 0, "a float >= 0")
            _require(
                self,
                "gaussian_max_norm",
                self.gaussian_max_norm >= self.gaussian_min_norm and self.gaussian_max_norm > 0,
                f"a float > 0 and >= gaussian_min_norm ({self.gaussian_min_norm}); inf for no upper bound",
            )
            _require(self, "embedding_std_init", self.embedding_std_init > 0, "a float > 0 for gaussian_norm_range")
        if variant == "numpy_import":
            _require(self, "init_wte_npy", bool(self.init_wte_npy), "a path to a .npy file")

    # ---------------------------------------------------------------- derived
    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def token_table_dim(self) -> int:
        """Width of the token table `wte`: `n_embd_wte` when factorized, else `n_embd`."""
        return self.n_embd_wte if self.n_embd_wte is not None else self.n_embd

    @property
    def effective_rope_length(self) -> int:
        return self.rope_length if self.rope_length is not None else self.head_dim


def _error(name: str, value: object, allowed: str) -> ValueError:
    return ValueError(f"{name}={value!r} is not allowed: expected {allowed}")


def _require(config: "HfEmbedConfig", name: str, ok: bool, allowed: str) -> None:
    if not ok:
        raise _error(name, getattr(config, name), allowed)


def _allowed_types(hint) -> tuple[type, ...]:
    """Runtime types a field annotation admits: `int | None` -> (int, NoneType); a Literal -> its values' types."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return tuple({type(v) for v in typing.get_args(hint)})
    if origin in (typing.Union, types.UnionType):
        return tuple(t for arg in typing.get_args(hint) for t in _allowed_types(arg))
    return (hint,)


def _literal_choices(hint) -> tuple:
    if typing.get_origin(hint) is Literal:
        return typing.get_args(hint)
    return ()


def _type_names(types: tuple[type, ...]) -> str:
    return " or ".join("None" if t is type(None) else t.__name__ for t in types)


__all__ = ["HfEmbedConfig", "ROPE_VARIANT_CHOICES", "INIT_VARIANT_CHOICES"]
