"""run_clm.py: end to end in subprocesses (one process, the default corpus, torchrun), argument parsing for
every config field, and resume equivalence."""

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_embed import HfEmbedConfig
from hf_embed.clm import NEW_MODEL_DEFAULTS
from hf_embed.data import default_corpus_text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import run_clm  # noqa: E402

TINY = [
    "--n_layer", "2", "--n_embd", "32", "--n_head", "4", "--block_size", "32", "--vocab_size", "320",
    "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "8", "--learning_rate", "3e-3",
    "--seed", "0", "--dataloader_pin_memory", "false", "--report_to", "none",
]  # fmt: skip


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HOME=str(tmp_path / "hf_home"),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
    )
    return env


def _run(command: list[str], tmp_path: Path, timeout: int = 300) -> str:
    """Run `command` in its own process group; on a time-out kill the whole group (torchrun's workers too)."""
    process = subprocess.Popen(
        command, cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"{command} timed out after {timeout} s:\n{stdout[-4000:]}\n{stderr[-4000:]}")
    assert process.returncode == 0, f"{command} failed:\n{stdout[-4000:]}\n{stderr[-4000:]}"
    return stdout + stderr


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """About 40 kB of English and Python (the start of the default corpus) as a .txt file."""
    path = tmp_path_factory.mktemp("data") / "corpus.txt"
    path.write_text(default_corpus_text()[:40_000], encoding="utf-8")
    return path


def _steps(folder: Path, stem: str) -> dict[int, Path]:
    return {int(p.name[len(stem) + 5 : -4]): p for p in folder.glob(f"{stem}-step*.np?")}


# ---------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus) -> tuple[Path, str]:
    """One `python run_clm.py` run on a text file: a factorized tiny model, 6 steps, an evaluation every 2."""
    tmp_path = tmp_path_factory.mktemp("e2e")
    out = tmp_path / "out"
    args = [*TINY, "--train_file", str(corpus), "--output_dir", str(out), "--max_steps", "6", "--eval_steps", "2"]
    args += ["--n_embd_wte", "16", "--export_wte_npy", "wte.npy", "--export_wte_each_eval"]
    args += ["--export_scale_matrices_npz", "scales.npz", "--export_scale_matrices_each_eval"]
    args += ["--eval_lengths", "16,32,64", "--logging_steps", "2"]
    return out, _run([sys.executable, str(ROOT / "run_clm.py"), *args], tmp_path)


def test_snapshots_for_each_evaluation_differ_and_the_final_export_is_the_model(trained):
    out, _ = trained
    snapshots = _steps(out, "wte")
    assert sorted(snapshots) == [2, 4, 6]  # one per evaluation, named by global step
    tables = [np.load(snapshots[s]) for s in (2, 4, 6)]
    assert all(t.shape == (320, 16) and t.dtype == np.float32 for t in tables)
    assert not np.array_equal(tables[0], tables[1]) and not np.array_equal(tables[1], tables[2])
    assert sorted(_steps(out, "scales")) == [2, 4, 6]
    np.testing.assert_array_equal(np.load(out / "wte.npy"), tables[2])
    weights = load_file(out / "model.safetensors")
    np.testing.assert_array_equal(weights["transformer.wte.weight"].numpy(), tables[2])


def test_the_snapshots_are_drawn_at_the_end_of_training(trained):
    out, _ = trained
    from PIL import Image

    with Image.open(out / "embeddings.png") as picture:
        assert picture.size[0] > 200 and len(np.unique(np.asarray(picture.convert("L")))) > 2


def test_the_folder_loads_with_the_auto_classes_and_generates(trained):
    out, log = trained
    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.use_cache is True  # Trainer trains with use_cache=False; the saved config says True
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_hf_embed.HfEmbedForCausalLM"
    assert config["n_embd_wte"] == 16 and config["use_cache"] is True
    assert (out / "modeling_hf_embed.py").is_file() and (out / "tokenizer.json").is_file()
    inputs = tokenizer("The for statement", return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert generated.shape == (1, inputs["input_ids"].shape[1] + 8)
    assert tokenizer.decode(generated[0]).startswith("The for statement")
    assert "Load it and generate" in log and str(out) in log


def test_the_three_printed_lines_load_and_generate_in_a_fresh_interpreter(trained):
    """The summary's lines, run as printed, with hf_embed not imported: remote code only, and no prompt."""
    out, log = trained
    lines = log[log.index("Load it and generate:") :].splitlines()[1:4]
    code = "\n".join(line.strip() for line in lines)
    assert code.count("trust_remote_code=True") == 2
    result = subprocess.run(
        [sys.executable, "-c", f"import sys\n{code}\nassert 'hf_embed' not in sys.modules"],
        cwd=out.parent, env=_env(out.parent), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("The for statement")
    assert "Do you wish to run the custom code" not in result.stdout + result.stderr


def test_metrics_and_context_lengths(trained):
    out, _ = trained
    results = json.loads((out / "all_results.json").read_text())
    assert results["perplexity"] == pytest.approx(math.exp(results["eval_loss"]))
    assert results["unigram_perplexity"] > 1
    assert isinstance(results["eval_len16_perplexity"], float)
    assert results["eval_len32_perplexity"] == pytest.approx(results["perplexity"])  # same blocks, same model
    assert results["eval_len64_perplexity"] == "n/a"  # past the learned absolute positions


def test_the_model_card_parses_and_carries_the_metadata(trained):
    out, _ = trained
    results = json.loads((out / "all_results.json").read_text())
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    assert {"hf_embed", "custom_code"} <= set(card.data.tags)
    assert card.data.datasets == ["corpus.txt"] and card.data.license == "apache-2.0"
    assert card.data.eval_results[0].metric_value == pytest.approx(results["perplexity"], rel=1e-4)
    assert "trust_remote_code=True" in card.text and "| `n_embd_wte` | `16` |" in card.text
    assert "| `use_abs_pos_embeddings` | `True` |" in card.text
    total = sum(t.numel() for t in load_file(out / "model.safetensors").values())
    assert f"| total | {total:,} |" in card.text  # tied head stored once, counted once


def test_continuing_from_the_folder_evaluates_the_same_model(trained, corpus, tmp_path):
    out, _ = trained
    metrics = run_clm.main(
        [*TINY, "--model_name_or_path", str(out), "--train_file", str(corpus), "--do_eval"]
        + ["--output_dir", str(tmp_path / "again")]
    )
    expected = json.loads((out / "all_results.json").read_text())
    assert metrics["eval_loss"] == pytest.approx(expected["eval_loss"], rel=1e-5)


def test_default_corpus_run(tmp_path):
    """`python run_clm.py` with only a step limit: the embedded corpus, a trained tokenizer, the summary."""
    out = tmp_path / "default"
    args = ["--max_steps", "2", "--eval_steps", "1", "--max_eval_samples", "8", "--output_dir", str(out)]
    log = _run([sys.executable, str(ROOT / "run_clm.py"), *args], tmp_path)
    assert sorted(_steps(out, "wte")) == [1, 2]  # the main job exports the table at every evaluation
    config = HfEmbedConfig.from_pretrained(out)
    assert (config.n_layer, config.n_embd, config.block_size) == (4, 128, 128)  # the small new-model default
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert config.vocab_size == len(tokenizer) == 2048
    assert ModelCard.load(out / "README.md").data.datasets == ["pydoc_data.topics"]
    assert "Validation perplexity" in log and "unigram baseline" in log
    assert "AutoModelForCausalLM.from_pretrained" in log


LAUNCHERS = {
    "torchrun": ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
    # accelerate's --cpu launcher starts several processes only through MPI; --multi_gpu starts them through
    # torchrun, and on a machine without GPUs run_clm.py then trains on the CPU over gloo.
    "accelerate": ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"],
}


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_two_processes_on_cpu(launcher, tmp_path, corpus):
    out = tmp_path / "ddp"
    args = [*TINY, "--train_file", str(corpus), "--output_dir", str(out), "--max_steps", "4", "--eval_steps", "2"]
    args += ["--export_wte_npy", "wte.npy", "--export_wte_each_eval", "--save_strategy", "no"]
    command = [sys.executable, *LAUNCHERS[launcher], str(ROOT / "run_clm.py"), *args]
    log = _run(command, tmp_path, timeout=400)
    assert "Process rank 1 of 2" in log
    assert sorted(_steps(out, "wte")) == [2, 4]
    names = sorted(p.name for p in out.iterdir())
    assert not [n for n in names if n.startswith(".")]  # no temporary files: each file written once
    assert names.count("README.md") == 1 and "model.safetensors" in names
    assert "| processes | `2` |" in (out / "README.md").read_text()
    assert log.count("Load it and generate") == 1  # the summary, like every file, comes from the main process
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 4


# -------------------------------------------------------------------------------------------- the arguments
# One case per HfEmbedConfig field: the command line, and the value the saved config must hold.
FLAG_CASES: dict[str, tuple[list[str], object]] = {
    "vocab_size": (["--vocab_size", "600"], 600),
    "n_embd": (["--n_embd", "64"], 64),
    "n_layer": (["--n_layer", "3"], 3),
    "n_head": (["--n_head", "8"], 8),
    "block_size": (["--block_size", "64"], 64),
    "activation_function": (["--activation_function", "gelu"], "gelu"),
    "dropout": (["--dropout", "0.1"], 0.1),
    "bias": (["--no_bias"], False),
    "layer_norm_epsilon": (["--layer_norm_epsilon", "1e-6"], 1e-6),
    "initializer_range": (["--initializer_range", "0.03"], 0.03),
    "use_cache": (["--use_cache", "false"], False),
    "bos_token_id": (["--bos_token_id", "5"], 5),
    "eos_token_id": (["--eos_token_id", "6"], 6),
    "pad_token_id": (["--pad_token_id", "7"], 7),
    "n_embd_wte": (["--n_embd_wte", "16"], 16),
    "n_embd_wte_scale_tying": (["--n_embd_wte", "16", "--no_n_embd_wte_scale_tying"], False),
    "wte_weight_tying": (["--wte_weight_tying", "false"], False),
    "import_wte_npy": (["--import_wte_npy", "in.npy"], "in.npy"),
    "export_wte_npy": (["--export_wte_npy", "out.npy"], "out.npy"),
    "export_wte_each_eval": (["--export_wte_npy", "w.npy", "--export_wte_each_eval"], True),
    "import_wte_freeze": (["--import_wte_freeze"], True),
    "import_scale_matrices_npz": (["--n_embd_wte", "16", "--import_scale_matrices_npz", "s.npz"], "s.npz"),
    "export_scale_matrices_npz": (["--n_embd_wte", "16", "--export_scale_matrices_npz", "s.npz"], "s.npz"),
    "export_scale_matrices_each_eval": (
        ["--n_embd_wte", "16", "--export_scale_matrices_npz", "s.npz", "--export_scale_matrices_each_eval", "true"],
        True,
    ),
    "import_scale_matrices_freeze": (["--n_embd_wte", "16", "--import_scale_matrices_freeze"], True),
    "use_abs_pos_embeddings": (["--no_use_abs_pos_embeddings"], False),
    "use_rotary_embeddings": (["--use_rotary_embeddings"], True),
    "rope_variant": (["--use_rotary_embeddings", "--rope_variant", "soap"], "soap"),
    "rope_length": (["--use_rotary_embeddings", "--rope_length", "16"], 16),
    "rope_theta": (["--rope_theta", "500"], 500.0),
    "sym_rot_num_angles": (["--sym_rot_num_angles", "64"], 64),
    "use_fire_embeddings": (["--use_fire_embeddings"], True),
    "shared_fire_embeddings": (["--use_fire_embeddings", "--shared_fire_embeddings"], True),
    "fire_mlp_width": (["--fire_mlp_width", "16"], 16),
    "fire_num_hidden_layers": (["--fire_num_hidden_layers", "2"], 2),
    "fire_init_c": (["--fire_init_c", "0.2"], 0.2),
    "fire_init_L": (["--fire_init_L", "256"], 256.0),
    "fire_log_bias": (["--fire_log_bias", "2.0"], 2.0),
    "fire_outermost_sigma": (["--fire_outermost_sigma"], True),
    "init_variant": (["--init_variant", "angle_hypersphere"], "angle_hypersphere"),
    "init_scale": (["--init_scale", "0.5"], 0.5),
    "init_wte_npy": (["--init_wte_npy", "table.npy"], "table.npy"),
    "init_radius": (["--init_radius", "2.0"], 2.0),
    "gaussian_min_norm": (["--gaussian_min_norm", "0.1"], 0.1),
    "gaussian_max_norm": (["--gaussian_max_norm", "5"], 5.0),
    "embedding_mean_init": (["--embedding_mean_init", "0.1"], 0.1),
    "embedding_std_init": (["--embedding_std_init", "0.05"], 0.05),
}


class _Tokenizer:
    """What `build_config` reads of a tokenizer."""

    bos_token_id = eos_token_id = pad_token_id = 0

    def __len__(self) -> int:
        return 300


def _saved_config(argv: list[str], tmp_path: Path) -> tuple[HfEmbedConfig, tuple]:
    parsed = run_clm.parse_args([*argv, "--output_dir", str(tmp_path / "out")])
    model_args, data_args, training_args, embed_args = parsed
    splits = run_clm.load_text_splits(data_args, training_args) if data_args.train_file else _NoText()
    config = run_clm.build_config(model_args, data_args, training_args, embed_args, _Tokenizer(), splits)
    config.save_pretrained(tmp_path / "saved")
    return HfEmbedConfig.from_pretrained(tmp_path / "saved"), parsed


class _NoText:
    source = "a file"


def test_flag_cases_cover_every_config_field():
    assert set(FLAG_CASES) == {f.name for f in HfEmbedConfig.argument_fields()}


@pytest.mark.parametrize("name", sorted(FLAG_CASES))
def test_every_config_field_is_a_flag_that_reaches_the_saved_config(name, tmp_path):
    argv, expected = FLAG_CASES[name]
    saved, _ = _saved_config(argv, tmp_path)
    assert getattr(saved, name) == expected
    for other, value in zip(*_defaults_for_untouched(argv)):
        assert getattr(saved, other) == value, f"{other} changed though only {argv} was given"


def _defaults_for_untouched(argv: list[str]) -> tuple[list[str], list]:
    """Fields no flag in `argv` names keep the new-model value (the script's small defaults, else the class's)."""
    named = {a[2:].removeprefix("no_") for a in argv if a.startswith("--")}
    tied = {"vocab_size", "bos_token_id", "eos_token_id", "pad_token_id", "block_size"}
    fields = [f for f in HfEmbedConfig.argument_fields() if f.name not in named | tied]
    values = [NEW_MODEL_DEFAULTS.get(f.name, f.default) for f in fields]
    return [f.name for f in fields], values


def test_block_size_sets_the_context_and_the_chunk_length(tmp_path, corpus):
    saved, parsed = _saved_config(["--block_size", "48", "--train_file", str(corpus)], tmp_path)
    assert saved.block_size == 48 and parsed[1].block_size == 48


def test_use_cache_is_off_in_training_and_on_in_the_saved_config_by_default(tmp_path):
    saved, (_, _, training_args, _) = _saved_config([], tmp_path)
    assert training_args.use_cache is False and saved.use_cache is True


def test_config_overrides_set_fields_whose_default_is_none(tmp_path):
    overrides = "n_embd_wte=64,rope_length=16,use_rotary_embeddings=true,rope_variant=soap,hidden_size=64"
    saved, _ = _saved_config(["--config_overrides", overrides], tmp_path)
    assert (saved.n_embd_wte, saved.rope_length, saved.rope_variant, saved.n_embd) == (64, 16, "soap", 64)
    saved, _ = _saved_config(["--n_embd_wte", "8", "--config_overrides", "n_embd_wte=None"], tmp_path)
    assert saved.n_embd_wte is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [("n_embd_wte=abc", "n_embd_wte='abc'"), ("nope=1", "nope=1"), ("rope_variant=spin", "rope_variant='spin'")],
)
def test_bad_config_overrides_name_the_field_and_value(overrides, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        _saved_config(["--config_overrides", overrides], tmp_path)


def test_a_single_json_file_holds_all_arguments(tmp_path):
    path = tmp_path / "args.json"
    path.write_text(json.dumps({"output_dir": str(tmp_path / "o"), "n_embd_wte": 8, "use_rotary_embeddings": True}))
    model_args, data_args, training_args, embed_args = run_clm.parse_args([str(path)])
    assert (embed_args.n_embd_wte, embed_args.use_rotary_embeddings, embed_args.rope_variant) == (8, True, None)
    assert training_args.do_train and training_args.do_eval


@pytest.mark.parametrize(
    ("flags", "train", "evaluate", "strategy"),
    [([], True, True, "steps"), (["--do_train"], True, False, "no"), (["--do_eval"], False, True, "no")],
)
def test_neither_do_train_nor_do_eval_means_both(flags, train, evaluate, strategy, tmp_path):
    training_args = run_clm.parse_args([*flags, "--output_dir", str(tmp_path)])[2]
    assert (training_args.do_train, training_args.do_eval, training_args.eval_strategy.value) == (
        train,
        evaluate,
        strategy,
    )


# ------------------------------------------------------------------------------------------------- resume
def test_resume_continues_exactly_with_frozen_tied_table(tmp_path, corpus):
    """Resuming from step 4 reproduces the uninterrupted run's steps 5..8.

    Same seed, same CPU kernels, the data order and RNG states restored from the checkpoint: the only possible
    difference is floating-point reduction order, so losses must agree to float32 rounding (rel 1e-5) and the
    frozen, tied token table must stay bit-identical to the imported array.
    """
    table = np.random.default_rng(0).normal(0, 0.02, (320, 32)).astype(np.float32)
    np.save(tmp_path / "table.npy", table)
    common = [*TINY, "--train_file", str(corpus), "--do_train", "--max_steps", "8", "--save_steps", "4"]
    common += ["--logging_steps", "1", "--import_wte_npy", str(tmp_path / "table.npy"), "--import_wte_freeze"]
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    run_clm.main([*common, "--output_dir", str(full)])
    run_clm.main([*common, "--output_dir", str(resumed), "--resume_from_checkpoint", str(full / "checkpoint-4")])

    def losses(folder: Path) -> dict[int, float]:
        history = json.loads((folder / "trainer_state.json").read_text())["log_history"]
        return {h["step"]: h["loss"] for h in history if "loss" in h}

    expected, got = losses(full), losses(resumed)
    assert sorted(got) == list(range(1, 9)) and sorted(expected) == list(range(1, 9))
    for step in range(5, 9):
        assert got[step] == pytest.approx(expected[step], rel=1e-5), step
    weights_full, weights_resumed = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert "lm_head.weight" not in weights_resumed  # tied: stored once
    np.testing.assert_array_equal(weights_resumed["transformer.wte.weight"].numpy(), table)
    for name, tensor in weights_full.items():
        torch.testing.assert_close(weights_resumed[name], tensor, rtol=1e-5, atol=1e-6)
    model = AutoModelForCausalLM.from_pretrained(resumed)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert not model.transformer.wte.weight.requires_grad


def test_eval_lengths_past_block_size_without_absolute_positions(tmp_path, corpus):
    args = [*TINY, "--train_file", str(corpus), "--max_steps", "2", "--eval_lengths", "16,64"]
    args += ["--no_use_abs_pos_embeddings", "--use_rotary_embeddings", "--output_dir", str(tmp_path / "rope")]
    metrics = run_clm.main(args)
    assert isinstance(metrics["eval_len64_perplexity"], float) and metrics["eval_len64_perplexity"] > 1
    assert "validation perplexity at 64 tokens of context" in (tmp_path / "rope" / "README.md").read_text()


def test_resume_last_skips_a_checkpoint_whose_save_was_interrupted(tmp_path):
    for step, state in ((2, '{"global_step": 2}'), (4, '{"global_st'), (6, None)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if state is not None:
            (folder / "trainer_state.json").write_text(state)
    training_args = run_clm.parse_args(["--output_dir", str(tmp_path), "--resume_from_checkpoint", "last"])[2]
    assert training_args.resume_from_checkpoint == str(tmp_path / "checkpoint-2")
    with pytest.raises(ValueError, match="no complete checkpoint"):
        run_clm.parse_args(["--output_dir", str(tmp_path / "empty"), "--resume_from_checkpoint", "last"])
