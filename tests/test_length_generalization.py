"""benchmarks/length_generalization.py: the quick study end to end, and the pieces its comparison rests on."""

import json
import math
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import tiny_model
from matplotlib import image
from transformers import Trainer, TrainingArguments, default_data_collator

from hf_embed.clm import evaluate_lengths

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks import length_generalization as study  # noqa: E402

LENGTHS = (128, 256, 512, 1024)
SCHEMES = ["absolute only", "RoPE", "SoAP (N=128)", "FIRE", "shared FIRE", "RoPE + FIRE"]


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("length_generalization")
    study.main(["--quick", "--threads", "1", "--out_dir", str(out)])
    return out


def test_quick_study_scores_every_scheme_at_every_length(quick):
    results = json.loads((quick / "results.json").read_text())
    assert list(results["schemes"]) == SCHEMES
    assert results["settings"]["train_length"] == 128 and tuple(results["settings"]["eval_lengths"]) == LENGTHS
    for row in results["schemes"].values():
        for metric in ("perplexity", "tail"):
            assert sorted(int(n) for n in row[metric]) == list(LENGTHS)
            assert all(math.isfinite(v) and v > 1 for v in row[metric].values())
    assert results["validation_windows"] == {"128": 8, "256": 4, "512": 2, "1024": 1}  # one 1024 window, --quick


def test_quick_study_table_has_a_number_for_every_scheme_and_length(quick):
    lines = (quick / "table.md").read_text().splitlines()
    header = "| scheme | 128 (train) | 256 | 512 | 1024 |"
    assert lines.count(header) == 2  # all tokens, then the tail tokens
    for scheme in SCHEMES:
        rows = [line for line in lines if line.startswith(f"| {scheme} |")]
        assert len(rows) == 2
        for row in rows:
            cells = [c.strip() for c in row.strip("|").split("|")][1:]
            assert len(cells) == len(LENGTHS) and all(float(c) > 1 for c in cells)


def test_quick_study_writes_a_png_that_opens_and_is_not_blank(quick):
    path = quick / "length_generalization.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = image.imread(path)[..., :3]
    assert pixels.shape[0] > 300 and pixels.shape[1] > 600
    assert pixels.std() > 0.05  # lines and text, not an empty canvas


def test_only_the_first_scheme_has_absolute_positions_and_they_reach_the_longest_length():
    settings = study.Settings()
    tiny = replace(settings, **study.QUICK)
    configs = {name: study.build_model(tiny, 320, o).config for name, o in study.schemes(settings).items()}
    assert [c.use_abs_pos_embeddings for c in configs.values()] == [True] + [False] * 5
    assert configs["absolute only"].block_size == max(settings.eval_lengths) == 1024
    assert configs["SoAP (N=128)"].sym_rot_num_angles == settings.train_length
    fire = [c for c in configs.values() if c.use_fire_embeddings]
    assert len(fire) == 3 and all(c.fire_init_L == settings.train_length for c in fire)
    assert [c.shared_fire_embeddings for c in fire] == [False, True, False]


def test_every_scheme_sees_the_same_batches_each_block_once_per_epoch():
    settings = replace(study.Settings(), steps=7, batch_size=4)
    order = study.batch_order(10, settings)
    assert order.shape == (7, 4)
    flat = order.flatten()
    assert sorted(flat[:10].tolist()) == list(range(10)) and sorted(flat[10:20].tolist()) == list(range(10))
    torch.testing.assert_close(order, study.batch_order(10, settings))


@pytest.mark.parametrize("overrides", [{}, {"use_abs_pos_embeddings": False, "use_fire_embeddings": True}])
def test_all_token_perplexity_is_run_clm_eval_lengths_number(overrides, tmp_path):
    """The study's main metric equals what `run_clm.py --eval_lengths` reports on the same token stream."""
    model = tiny_model(**overrides)
    ids = torch.randint(0, model.config.vocab_size, (4 * 64,), generator=torch.Generator().manual_seed(0))
    args = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=3, report_to="none", use_cpu=True)
    trainer = Trainer(model=model, args=args, data_collator=default_data_collator)
    expected = evaluate_lengths(trainer, ids.tolist(), [16, 64], model.config)
    for length in (16, 64):
        losses = study.token_losses(model, ids, length, batch_size=2)
        assert losses.shape == (len(ids) // length, length - 1)
        assert math.exp(losses.mean().item()) == pytest.approx(expected[f"eval_len{length}_perplexity"], rel=1e-5)


def test_tail_scores_the_same_tokens_at_every_length():
    """The tail metric: the last (shortest − 1) tokens of every longest-length span, whatever the window length."""
    model = tiny_model(use_abs_pos_embeddings=False, use_rotary_embeddings=True)
    spans = torch.randint(0, model.config.vocab_size, (3, 64), generator=torch.Generator().manual_seed(1))
    data = study.Data(train_blocks=spans[:, :16], validation_ids=spans.flatten(), vocab_size=97, train_tokens=0)
    settings = replace(study.Settings(), eval_lengths=(16, 32, 64), eval_batch_size=2)
    tail = study.evaluate(model, data, settings)["tail"]
    with torch.no_grad():
        short = model(input_ids=spans[:, -16:], labels=spans[:, -16:]).loss  # the last 16-token window of each span
        logits = model(input_ids=spans).logits[:, -16:-1]  # the same 15 tokens, predicted with all 64 positions
        long = torch.nn.functional.cross_entropy(logits.transpose(1, 2), spans[:, -15:])
    assert tail[16] == pytest.approx(math.exp(short.item()), rel=1e-5)
    assert tail[64] == pytest.approx(math.exp(long.item()), rel=1e-5)
    assert tail[16] != pytest.approx(tail[64], rel=1e-6)  # the context differs, so the numbers do
