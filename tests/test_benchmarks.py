"""benchmarks/: every script's --quick run end to end (its tables and rows, never its timings), and the counts the
benchmarks' figures rest on."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks import common  # noqa: E402

TRAIN_ROWS = [
    "transformers GPT-2",
    "absolute only",
    "+ RoPE",
    "+ RoPE partial (rope_length=16)",  # --quick: head_dim 32
    "+ SoAP",
    "+ FIRE per layer",
    "+ FIRE shared",
    "factorized r=64 tied",
    "everything on (RoPE, FIRE per layer, r=64)",
]
SCALING_ROWS = ["absolute only", "+ RoPE", "+ FIRE per layer", "+ FIRE shared"]


def run_quick(module: str, *extra: str, hf_home: str) -> str:
    env = dict(os.environ, HF_HOME=hf_home, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{module}", "--quick", "--threads", "1", *extra],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def tables(output: str) -> list[list[dict[str, str]]]:
    """Every Markdown table printed, as rows of {header: cell}."""
    found, block = [], []
    for line in [*output.splitlines(), ""]:
        if line.startswith("|"):
            block.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif block:
            headers, _, *rows = block
            found.append([dict(zip(headers, row, strict=True)) for row in rows])
            block = []
    return found


@pytest.fixture(scope="module")
def train_output(tmp_path_factory) -> str:
    return run_quick("bench_train", "--seq-lens", "32,64", hf_home=str(tmp_path_factory.mktemp("hf")))


def test_train_quick_prints_every_row_against_gpt2(train_output):
    main, _ = tables(train_output)
    assert [row["model"] for row in main] == TRAIN_ROWS
    assert main[0]["× GPT-2 tokens/s"] == "1.000"  # GPT-2 against itself, round by round
    assert main[1]["time vs absolute"] == "+0.0%"
    for row in main:
        assert float(row["tokens/s"]) > 0 and row["MFU vs matmul"].endswith("%")
    assert "fp32 matmul:" in train_output and "GFLOP/s" in train_output


def test_train_quick_scaling_table_has_each_length_and_mechanism(train_output):
    _, scaling = tables(train_output)
    assert [(int(row["T"]), row["model"]) for row in scaling] == [(t, m) for t in (32, 64) for m in SCALING_ROWS]
    for row in scaling:
        assert int(row["batch"]) * int(row["T"]) == 64  # --quick: 2 × 32 tokens per step at every length
        assert float(row["peak RSS MiB"]) > 0
        if row["model"] == "absolute only":
            assert row["RSS × absolute"] == "1.00"


def test_generate_quick_prints_tokens_per_second_and_per_position_times(tmp_path):
    (table,) = tables(run_quick("bench_generate", hf_home=str(tmp_path)))
    names = ["transformers GPT-2", "absolute", "RoPE", "FIRE per layer", "FIRE shared"]
    assert [row["model"] for row in table] == names
    assert table[0]["× GPT-2"] == "1.000"
    for row in table:
        assert float(row["new tokens/s"]) > 0 and float(row["ms/token at 8"]) > 0 and float(row["ms/token at 24"]) > 0


def test_memory_quick_counts_parameters_of_each_rank(tmp_path):
    (table,) = tables(run_quick("bench_memory", hf_home=str(tmp_path)))
    assert [row["model"] for row in table] == ["transformers GPT-2", "r = none", "r = 256", "r = 128", "r = 64"]
    count = {row["model"]: int(row["parameters"].replace(",", "")) for row in table}
    vocab, d = 4096, 128  # --quick
    assert count["transformers GPT-2"] == count["r = none"]  # the same architecture
    for rank in (256, 128, 64):  # the table (V, r) and one tied adapter (d, r) replace the (V, d) table
        assert count[f"r = {rank}"] == count["r = none"] - vocab * d + vocab * rank + d * rank
    assert all(float(row["peak RSS MiB"]) > 0 for row in table)


def test_flop_count_of_gpt2_small():
    """6 FLOPs per matmul weight per token (head included, embeddings not) plus 12·n_layer·d·T for attention."""
    size = common.Size(n_layer=12, n_embd=768, n_head=12, vocab_size=50257)
    weights = 12 * (768 * 3 * 768 + 768 * 768 + 2 * 768 * 4 * 768) + 50257 * 768
    assert common.matmul_parameters(size) == weights
    assert common.training_flops_per_token(size, 1024) == 6 * weights + 12 * 12 * 768 * 1024
    # factorized: the (V, r) head and the tied adapter, used up and down
    assert common.matmul_parameters(size, 64) == weights - 50257 * 768 + 50257 * 64 + 2 * 768 * 64


def test_paired_ratio_is_the_median_of_per_round_ratios():
    assert common.paired_ratio([2.0, 9.0, 3.0], [1.0, 3.0, 1.0]) == 3.0
    assert common.paired_ratio([5.0, 1.0], [5.0, 1.0]) == 1.0
