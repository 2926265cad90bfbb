"""The token embedding stack at model level (SPEC §2): the factorized table with its up/down adapters, scale-matrix
and head tying, numpy import/export, freezing through from_pretrained and Trainer, and every bad input."""

import os
import tempfile

os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="hf_embed_test_home_")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments  # noqa: E402
from transformers.testing_utils import CaptureLogger  # noqa: E402

import hf_embed.modeling_hf_embed as modeling  # noqa: E402
from hf_embed import HfEmbedConfig, HfEmbedForCausalLM, HfEmbedModel  # noqa: E402

V, D, R = 64, 32, 8
IDS = torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(0))
STACK_KEYS = ("transformer.wte.weight", "transformer.scale_up.weight", "transformer.scale_down.weight")


def make_config(**overrides) -> HfEmbedConfig:
    values = {"vocab_size": V, "n_embd": D, "n_layer": 2, "n_head": 2, "block_size": 32, "n_embd_wte": R}
    return HfEmbedConfig(**{**values, **overrides})


def build(cls=HfEmbedForCausalLM, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return cls(make_config(**overrides)).eval()


def output(model, ids: torch.Tensor = IDS) -> torch.Tensor:
    """Logits of a causal LM, the last hidden state of the bare decoder."""
    with torch.no_grad():
        result = model(ids)
    return result.logits if hasattr(result, "logits") else result.last_hidden_state


def adapters(model):
    base = model.base_model
    return [m.weight for m in (base.scale_up, base.scale_down) if m is not None]


def random_array(shape, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def save_stack_files(folder, scale_tying: bool = True, rank: int = R, seed: int = 10):
    """Hand-built files: wte (V, r) and the adapters, each (r, d) as SPEC §2 lays them out."""
    e, up = random_array((V, rank), seed), random_array((rank, D), seed + 1) / np.sqrt(rank)
    down = up if scale_tying else random_array((rank, D), seed + 2) / np.sqrt(rank)
    np.save(folder / "wte.npy", e)
    np.savez(folder / "scale.npz", scale_up=up, scale_down=down)
    return e, up, down


# ---------------------------------------------------------------- structure


@pytest.mark.parametrize("scale_tying", [True, False])
@pytest.mark.parametrize("head_tying", [True, False])
def test_parameters_and_shapes(scale_tying, head_tying):
    model = build(n_embd_wte_scale_tying=scale_tying, wte_weight_tying=head_tying)
    base, names = model.transformer, dict(model.named_parameters())
    assert base.wte.weight.shape == (V, R) and model.lm_head.weight.shape == (V, R)
    assert base.scale_up.weight.shape == (D, R)  # nn.Linear(r, d) layout
    scale_names = sorted(n for n in names if "scale_" in n)
    if scale_tying:
        assert base.scale_down is None and scale_names == ["transformer.scale_up.weight"]
    else:
        assert base.scale_down.weight.shape == (D, R) and base.scale_down.weight is not base.scale_up.weight
        assert scale_names == ["transformer.scale_down.weight", "transformer.scale_up.weight"]
    assert (model.lm_head.weight is base.wte.weight) == head_tying
    assert ("lm_head.weight" in names) == (not head_tying)


def test_unfactorized_model_has_no_adapters():
    model = build(n_embd_wte=None)
    assert model.transformer.wte.weight.shape == (V, D)
    assert model.transformer.scale_up is None and model.transformer.scale_down is None
    assert not [n for n, _ in model.named_parameters() if "scale_" in n]


@pytest.mark.parametrize("scale_tying", [True, False])
def test_one_tied_matrix_serves_both_ways(scale_tying):
    """up e ↦ e Wᵀ; down h ↦ h W with W = scale_up's own (d, r) matrix when tied, else W_down."""
    model = build(n_embd_wte_scale_tying=scale_tying)
    base = model.transformer
    w_up = base.scale_up.weight.detach().double()
    w_down = w_up if scale_tying else base.scale_down.weight.detach().double()
    e, h = torch.randn(3, R, dtype=torch.float64), torch.randn(3, D, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(base.scale_embeddings(e.float()).double(), e @ w_up.T)
        torch.testing.assert_close(base.project_down(h.float()).double(), h @ w_down)


def test_tied_matrix_gets_gradient_from_both_directions():
    """The loss reaches the one adapter through the input path and the output path: both contribute."""
    model = build(use_abs_pos_embeddings=False).train()
    base, w = model.transformer, model.transformer.scale_up.weight
    model(IDS, labels=IDS).loss.backward()
    total = w.grad.clone()
    model.zero_grad()
    with torch.no_grad():  # the output path alone: feed fixed model-space states through ln_f -> down -> head
        hidden = base(IDS).last_hidden_state
    model.lm_head(base.project_down(hidden)).sum().backward()
    output_only = w.grad.clone()
    assert output_only.abs().sum() > 0 and total.abs().sum() > 0
    assert not torch.allclose(total, output_only)


def test_inputs_embeds_are_table_rows():
    model = build()
    with torch.no_grad():
        torch.testing.assert_close(model(inputs_embeds=model.transformer.wte(IDS)).logits, output(model))


# ---------------------------------------------------------------- forward against a numpy oracle


@pytest.mark.parametrize("scale_tying", [True, False])
@pytest.mark.parametrize("abs_pos", [False, True])
def test_forward_from_hand_built_files_matches_numpy(tmp_path, scale_tying, abs_pos):
    """x = e @ scale_up (+ wpe) enters the blocks; logits = (h @ scale_downᵀ) @ eᵀ with h after ln_f."""
    e, up, down = save_stack_files(tmp_path, scale_tying)
    model = build(
        n_embd_wte_scale_tying=scale_tying,
        use_abs_pos_embeddings=abs_pos,
        import_wte_npy=str(tmp_path / "wte.npy"),
        import_scale_matrices_npz=str(tmp_path / "scale.npz"),
    )
    captured = {}

    def capture_block_input(module, args):
        captured.setdefault("x", args[0])  # returns None: the input passes unchanged

    model.transformer.h[0].register_forward_pre_hook(capture_block_input)
    logits = output(model).double().numpy()
    hidden = model.transformer(IDS).last_hidden_state.detach().double().numpy()

    e64, up64, down64 = e.astype(np.float64), up.astype(np.float64), down.astype(np.float64)
    expected_x = e64[IDS.numpy()] @ up64
    if abs_pos:
        expected_x = expected_x + model.transformer.wpe.weight.detach().double().numpy()[: IDS.shape[1]]
    np.testing.assert_allclose(captured["x"].detach().double().numpy(), expected_x, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits, (hidden @ down64.T) @ e64.T, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- export -> import round trips


def copy_all_but_the_stack(source, target, head_tying: bool) -> None:
    """Give `target` every weight of `source` except the table and the adapters (the tied head is the table)."""
    skip = set(STACK_KEYS) | ({"lm_head.weight"} if head_tying else set())
    state = {k: v for k, v in source.state_dict().items() if k not in skip and not k.endswith(STACK_KEYS)}
    missing, unexpected = target.load_state_dict(state, strict=False)
    assert not unexpected and all(k in skip or k.endswith(STACK_KEYS) for k in missing)


@pytest.mark.parametrize("rank", [R, D], ids=["r<d", "r=d"])
@pytest.mark.parametrize("scale_tying", [True, False])
@pytest.mark.parametrize("head_tying", [True, False])
@pytest.mark.parametrize("via", ["methods", "config"])
def test_export_import_round_trip_gives_identical_logits(tmp_path, rank, scale_tying, head_tying, via):
    settings = {"n_embd_wte": rank, "n_embd_wte_scale_tying": scale_tying, "wte_weight_tying": head_tying}
    source = build(seed=0, **settings)
    source.export_wte_npy(str(tmp_path / "wte.npy"))
    source.export_scale_matrices_npz(str(tmp_path / "scale.npz"))
    paths = {"import_wte_npy": str(tmp_path / "wte.npy"), "import_scale_matrices_npz": str(tmp_path / "scale.npz")}

    target = build(seed=1, **settings, **(paths if via == "config" else {}))
    copy_all_but_the_stack(source, target, head_tying)
    if via == "methods":
        assert not torch.allclose(output(target), output(source))
        target.import_wte_npy(paths["import_wte_npy"])
        target.import_scale_matrices_npz(paths["import_scale_matrices_npz"])
    assert torch.equal(output(target), output(source))
    assert (target.lm_head.weight is target.transformer.wte.weight) == head_tying


@pytest.mark.parametrize("scale_tying", [True, False])
def test_exported_files_have_the_spec_layout(tmp_path, scale_tying):
    model = build(n_embd_wte_scale_tying=scale_tying)
    model.export_wte_npy(str(tmp_path / "wte.npy"))
    model.export_scale_matrices_npz(str(tmp_path / "scale.npz"))
    table = np.load(tmp_path / "wte.npy", allow_pickle=False)
    assert table.dtype == np.float32 and table.shape == (V, R)
    np.testing.assert_array_equal(table, model.transformer.wte.weight.detach().numpy())
    with np.load(tmp_path / "scale.npz", allow_pickle=False) as archive:
        assert sorted(archive.files) == ["scale_down", "scale_up"]
        up, down = archive["scale_up"], archive["scale_down"]
    assert up.shape == down.shape == (R, D) and up.dtype == np.float32
    np.testing.assert_array_equal(up, model.transformer.scale_up.weight.detach().numpy().T)
    adapter_down = model.transformer.scale_up if scale_tying else model.transformer.scale_down
    np.testing.assert_array_equal(down, adapter_down.weight.detach().numpy().T)


def test_bare_decoder_round_trip(tmp_path):
    source, target = build(HfEmbedModel, seed=0), build(HfEmbedModel, seed=1)
    source.export_wte_npy(str(tmp_path / "wte.npy"))
    source.export_scale_matrices_npz(str(tmp_path / "scale.npz"))
    copy_all_but_the_stack(source, target, head_tying=False)
    target.import_wte_npy(str(tmp_path / "wte.npy"))
    target.import_scale_matrices_npz(str(tmp_path / "scale.npz"))
    assert torch.equal(output(target), output(source))


def test_tied_model_accepts_a_file_with_only_scale_up(tmp_path):
    up = random_array((R, D), 3)
    np.savez(tmp_path / "up.npz", scale_up=up)
    model = build(import_scale_matrices_npz=str(tmp_path / "up.npz"))
    np.testing.assert_array_equal(model.transformer.scale_up.weight.detach().numpy(), up.T)


def test_integer_table_is_cast(tmp_path):
    table = np.arange(V * R, dtype=np.int64).reshape(V, R) % 7 - 3
    np.save(tmp_path / "wte.npy", table)
    model = build(import_wte_npy=str(tmp_path / "wte.npy"))
    assert model.transformer.wte.weight.dtype == torch.float32
    np.testing.assert_array_equal(model.transformer.wte.weight.detach().numpy(), table.astype(np.float32))


def test_relative_import_path_resolves_against_the_working_directory(tmp_path, monkeypatch):
    e, _, _ = save_stack_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    model = build(import_wte_npy="wte.npy")
    np.testing.assert_array_equal(model.transformer.wte.weight.detach().numpy(), e)


# ---------------------------------------------------------------- save_pretrained / from_pretrained


def saved_keys(folder) -> list[str]:
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return sorted(f.keys())


@pytest.mark.parametrize("scale_tying", [True, False])
@pytest.mark.parametrize("head_tying", [True, False])
def test_safetensors_holds_each_tied_tensor_once_and_reloads_tied(tmp_path, scale_tying, head_tying):
    model = build(n_embd_wte_scale_tying=scale_tying, wte_weight_tying=head_tying)
    model.save_pretrained(tmp_path)
    keys = saved_keys(tmp_path)
    expected_adapters = ["transformer.scale_up.weight"] + ([] if scale_tying else ["transformer.scale_down.weight"])
    assert sorted(k for k in keys if "scale_" in k) == sorted(expected_adapters)
    assert ("lm_head.weight" in keys) == (not head_tying)

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, HfEmbedForCausalLM)
    assert torch.equal(output(loaded), output(model))
    assert (loaded.lm_head.weight is loaded.transformer.wte.weight) == head_tying
    assert (loaded.transformer.scale_down is None) == scale_tying
    assert len(adapters(loaded)) == (1 if scale_tying else 2)


def test_from_pretrained_never_reads_an_import_path(tmp_path):
    """Saved from a config with every import argument: loads with the files deleted, then with garbage in them."""
    files = tmp_path / "files"
    files.mkdir()
    save_stack_files(files)
    np.save(files / "init.npy", random_array((V, R), 4))
    model = build(
        import_wte_npy=str(files / "wte.npy"),
        import_scale_matrices_npz=str(files / "scale.npz"),
        init_variant="numpy_import",
        init_wte_npy=str(files / "init.npy"),
    )
    model.save_pretrained(tmp_path / "saved")
    for name in ("wte.npy", "scale.npz", "init.npy"):
        (files / name).unlink()
    assert torch.equal(output(HfEmbedForCausalLM.from_pretrained(tmp_path / "saved").eval()), output(model))
    for name in ("wte.npy", "scale.npz", "init.npy"):
        (files / name).write_bytes(b"garbage")
    assert torch.equal(output(AutoModelForCausalLM.from_pretrained(tmp_path / "saved").eval()), output(model))
    with pytest.raises(ValueError, match="init_wte_npy: cannot read .*init.npy"):  # building from the config reads
        HfEmbedForCausalLM(model.config)


# ---------------------------------------------------------------- works with the rest of transformers


@pytest.mark.parametrize("scale_tying", [True, False])
def test_sdpa_matches_eager_and_cached_generation_matches_uncached(scale_tying):
    model = build(n_embd_wte_scale_tying=scale_tying)
    model.config._attn_implementation = "eager"
    eager = output(model)
    model.config._attn_implementation = "sdpa"
    torch.testing.assert_close(output(model), eager, rtol=1e-5, atol=1e-5)
    prompt = IDS[:, :4]
    cached = model.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=True)
    uncached = model.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_gradient_checkpointing_gives_the_same_gradients():
    model = build(n_embd_wte_scale_tying=False, wte_weight_tying=False).train()
    model(IDS, labels=IDS).loss.backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    assert all(block.gradient_checkpointing for block in model.transformer.h)
    model(IDS, labels=IDS).loss.backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, reference[name], msg=name)


# ---------------------------------------------------------------- freezing


def frozen_names(model) -> set[str]:
    return {n for n, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}


def test_freeze_arguments_from_config(tmp_path):
    save_stack_files(tmp_path, scale_tying=False)
    model = build(
        n_embd_wte_scale_tying=False,
        import_wte_npy=str(tmp_path / "wte.npy"),
        import_wte_freeze=True,
        import_scale_matrices_npz=str(tmp_path / "scale.npz"),
        import_scale_matrices_freeze=True,
    )
    assert frozen_names(model) == {
        "transformer.wte.weight",
        "lm_head.weight",  # the tied head is the table
        "transformer.scale_up.weight",
        "transformer.scale_down.weight",
    }


def test_freeze_by_method_is_recorded_and_survives_from_pretrained(tmp_path):
    model = build(wte_weight_tying=False)
    model.export_wte_npy(str(tmp_path / "wte.npy"))
    model.export_scale_matrices_npz(str(tmp_path / "scale.npz"))
    model.import_wte_npy(str(tmp_path / "wte.npy"), freeze=True)
    model.import_scale_matrices_npz(str(tmp_path / "scale.npz"), freeze=True)
    expected = {"transformer.wte.weight", "transformer.scale_up.weight"}  # the untied head still trains
    assert frozen_names(model) == expected
    assert model.config.import_wte_freeze and model.config.import_scale_matrices_freeze
    model.save_pretrained(tmp_path / "saved")
    assert frozen_names(HfEmbedForCausalLM.from_pretrained(tmp_path / "saved")) == expected
    assert frozen_names(HfEmbedModel.from_pretrained(tmp_path / "saved")) == {"wte.weight", "scale_up.weight"}


def test_freezing_adapters_without_a_file_warns():
    with CaptureLogger(modeling.logger) as captured:
        model = build(import_scale_matrices_freeze=True)
    assert "random initialisation" in captured.out
    assert frozen_names(model) == {"transformer.scale_up.weight"}


def tiny_dataset(count: int = 8, length: int = 16) -> list[dict[str, list[int]]]:
    generator = torch.Generator().manual_seed(7)
    rows = torch.randint(0, V, (count, length), generator=generator).tolist()
    return [{"input_ids": row, "labels": row} for row in rows]


TRAINER_CASES = {
    # name: (config overrides, parameter names expected frozen)
    "wte, tied head": ({"import_wte_freeze": True}, {"transformer.wte.weight", "lm_head.weight"}),
    "wte, untied head": (
        {"import_wte_freeze": True, "wte_weight_tying": False, "n_embd_wte_scale_tying": False},
        {"transformer.wte.weight"},
    ),
    "untied adapters": (
        {"import_scale_matrices_freeze": True, "n_embd_wte_scale_tying": False},
        {"transformer.scale_up.weight", "transformer.scale_down.weight"},
    ),
    "everything in the stack": (
        {"import_wte_freeze": True, "import_scale_matrices_freeze": True},
        {"transformer.wte.weight", "lm_head.weight", "transformer.scale_up.weight"},
    ),
}


@pytest.mark.parametrize("case", list(TRAINER_CASES))
def test_freezing_survives_from_pretrained_and_trainer(tmp_path, case):
    """Imported from files, saved, files deleted, reloaded, trained: frozen tensors stay bit-identical."""
    overrides, expected_frozen = TRAINER_CASES[case]
    scale_tying = overrides.get("n_embd_wte_scale_tying", True)
    save_stack_files(tmp_path, scale_tying)
    paths = {"import_wte_npy": str(tmp_path / "wte.npy"), "import_scale_matrices_npz": str(tmp_path / "scale.npz")}
    build(**paths, **overrides).save_pretrained(tmp_path / "saved")
    (tmp_path / "wte.npy").unlink()
    (tmp_path / "scale.npz").unlink()

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    assert frozen_names(model) == expected_frozen
    before = {n: p.detach().clone() for n, p in model.named_parameters(remove_duplicate=False)}
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=3,
        per_device_train_batch_size=4,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        learning_rate=1e-2,
    )
    trainer = Trainer(model=model, args=args, train_dataset=tiny_dataset())
    trainer.train()

    for name, param in model.named_parameters(remove_duplicate=False):
        changed = not torch.equal(param.detach(), before[name])
        assert changed == (name not in expected_frozen), name
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    parameters = dict(model.named_parameters(remove_duplicate=False))
    assert not optimized & {id(parameters[n]) for n in expected_frozen}
    assert optimized == {id(p) for n, p in parameters.items() if n not in expected_frozen}
    assert frozen_names(model) == expected_frozen


# ---------------------------------------------------------------- bad input


def error_message(call, *fragments) -> str:
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def test_missing_import_file_at_construction(tmp_path):
    path = str(tmp_path / "absent.npy")
    error_message(lambda: build(import_wte_npy=path), "import_wte_npy", path, "no such file", f"({V}, {R})")
    npz = str(tmp_path / "absent.npz")
    error_message(lambda: build(import_scale_matrices_npz=npz), "import_scale_matrices_npz", npz, "no such file")


def test_wrong_table_shape_names_path_expected_and_found(tmp_path):
    path = tmp_path / "wte.npy"
    np.save(path, random_array((V, D), 0))  # the unfactorized width
    error_message(lambda: build(import_wte_npy=str(path)), "import_wte_npy", str(path), f"({V}, {D})", f"({V}, {R})")


@pytest.mark.parametrize(
    "array",
    [np.array([["x"] * R] * V), np.array([[None] * R] * V, dtype=object), np.full((V, R), np.nan, np.float32)],
    ids=["strings", "objects", "nan"],
)
def test_bad_table_contents(tmp_path, array):
    path = tmp_path / "wte.npy"
    np.save(path, array, allow_pickle=array.dtype == object)
    error_message(lambda: build().import_wte_npy(str(path)), "import_wte_npy", str(path))


def test_npz_in_the_transposed_layout_is_refused(tmp_path):
    path = tmp_path / "scale.npz"
    np.savez(path, scale_up=random_array((D, R), 0), scale_down=random_array((D, R), 0))  # (d, r): upstream's bug
    error_message(
        lambda: build().import_scale_matrices_npz(str(path)),
        "import_scale_matrices_npz",
        str(path),
        "'scale_up'",
        f"({D}, {R})",
        f"({R}, {D})",
    )


def test_npz_without_scale_up(tmp_path):
    path = tmp_path / "scale.npz"
    np.savez(path, scale_down=random_array((R, D), 0))
    error_message(lambda: build().import_scale_matrices_npz(str(path)), "import_scale_matrices_npz", "['scale_up']")


def test_untied_adapters_need_both_keys(tmp_path):
    path = tmp_path / "scale.npz"
    np.savez(path, scale_up=random_array((R, D), 0))
    model = build(n_embd_wte_scale_tying=False)
    error_message(lambda: model.import_scale_matrices_npz(str(path)), "import_scale_matrices_npz", "['scale_down']")


def test_tied_npz_whose_arrays_differ(tmp_path):
    path = tmp_path / "scale.npz"
    np.savez(path, scale_up=random_array((R, D), 0), scale_down=random_array((R, D), 1))
    before = build().transformer.scale_up.weight.detach().clone()
    model = build()
    error_message(
        lambda: model.import_scale_matrices_npz(str(path)), "import_scale_matrices_npz", "different", "tying=True"
    )
    assert torch.equal(model.transformer.scale_up.weight, before)  # nothing was half-imported


def test_npz_with_non_finite_values(tmp_path):
    path = tmp_path / "scale.npz"
    up = random_array((R, D), 0)
    up[1, 2] = np.inf
    np.savez(path, scale_up=up)
    error_message(lambda: build().import_scale_matrices_npz(str(path)), "import_scale_matrices_npz", "'scale_up'")


def test_scale_methods_on_an_unfactorized_model(tmp_path):
    model = build(n_embd_wte=None)
    error_message(lambda: model.export_scale_matrices_npz(str(tmp_path / "s.npz")), "export_scale_matrices_npz")
    error_message(lambda: model.import_scale_matrices_npz(str(tmp_path / "s.npz")), "import_scale_matrices_npz")
    assert not (tmp_path / "s.npz").exists()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("import_scale_matrices_npz", "scale.npz"),
        ("export_scale_matrices_npz", "scale.npz"),
        ("export_scale_matrices_each_eval", True),
        ("import_scale_matrices_freeze", True),
    ],
)
def test_scale_arguments_need_n_embd_wte(name, value):
    error_message(lambda: make_config(n_embd_wte=None, **{name: value}), name, repr(value), "n_embd_wte")


@pytest.mark.parametrize("value", [0, -3])
def test_n_embd_wte_must_be_positive(value):
    error_message(lambda: make_config(n_embd_wte=value), f"n_embd_wte={value}", ">= 1")
