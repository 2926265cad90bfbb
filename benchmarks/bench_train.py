"""Training-step throughput of HfEmbedForCausalLM against transformers' GPT2LMHeadModel, in one process.

    python -m benchmarks.bench_train                          # the default size, every row, ~5 minutes
    python -m benchmarks.bench_train --seq-lens 256,512,1024,2048   # + how tokens/s and peak memory grow with T
    python -m benchmarks.bench_train --quick                  # a tiny run of every row (~20 s), for the tests

fp32 on CPU, dropout 0 on both models, the same AdamW for all. After a warm-up, every model takes one step in
turn, round after round, and each figure is a median over rounds; ratios are medians of per-round ratios. A
dense (2048 × 2048) fp32 matmul is timed in the same rounds, and model FLOP utilisation is reported against it:
6 FLOPs per matmul parameter per token plus 12·n_layer·d·T for attention. Every hf_embed row has learned
absolute positions (the default) plus what the row adds. Peak memory (with --seq-lens) is the VmHWM of a
fresh process per configuration.
"""

import argparse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

import torch

from benchmarks.common import (
    MATMUL_SIZE,
    MemoryJob,
    Size,
    add_size_arguments,
    alternate,
    build_model,
    machine_line,
    make_optimizer,
    matmul_operands,
    measure_memory,
    median,
    paired_ratio,
    size_from,
    table,
    token_batch,
    training_flops_per_token,
    training_step,
)

GPT2 = "transformers GPT-2"
MATMUL = "matmul"


def variants(size: Size, rank: int = 64) -> dict[str, dict]:
    """Row name -> HfEmbedConfig overrides; every row keeps learned absolute positions."""
    head_dim = size.n_embd // size.n_head
    partial = max(2, head_dim // 4 * 2)  # half the head, rounded down to an even length
    rope = {"use_rotary_embeddings": True}
    fire = {"use_fire_embeddings": True}
    return {
        "absolute only": {},
        "+ RoPE": rope,
        f"+ RoPE partial (rope_length={partial})": {**rope, "rope_length": partial},
        "+ SoAP": {**rope, "rope_variant": "soap"},
        "+ FIRE per layer": fire,
        "+ FIRE shared": {**fire, "shared_fire_embeddings": True},
        f"factorized r={rank} tied": {"n_embd_wte": rank},
        f"everything on (RoPE, FIRE per layer, r={rank})": {**rope, **fire, "n_embd_wte": rank},
    }


SCALING_ROWS = ["absolute only", "+ RoPE", "+ FIRE per layer", "+ FIRE shared"]


def step_function(size: Size, overrides: dict | None, batch: int, seq_len: int):
    model = build_model(size, overrides).train()
    optimizer = make_optimizer(model)
    ids = token_batch(size.vocab_size, batch, seq_len)
    return lambda: training_step(model, optimizer, ids)


def matmul_function(calls: int = 3):
    a, b = matmul_operands()

    def run() -> None:
        for _ in range(calls):
            torch.matmul(a, b)

    return run, calls


def main_table(args: argparse.Namespace) -> str:
    size = size_from(args, block_size=max(1024, args.seq_len))
    rows = variants(size, args.rank)
    if args.rows:
        wanted = [name.strip() for name in args.rows.split(",")]
        rows = {name: overrides for name, overrides in rows.items() if name in wanted or name == "absolute only"}
    fns = {GPT2: step_function(size, None, args.batch, args.seq_len)}
    fns.update({name: step_function(size, overrides, args.batch, args.seq_len) for name, overrides in rows.items()})
    fns[MATMUL], calls = matmul_function()
    times = alternate(fns, args.reps, args.warmup)

    tokens = args.batch * args.seq_len
    matmul_rates = [calls * 2 * MATMUL_SIZE**3 / t for t in times[MATMUL]]
    lines = []
    for name in [GPT2, *rows]:
        rank = None if name == GPT2 else rows[name].get("n_embd_wte")
        flops = training_flops_per_token(size, args.seq_len, rank) * tokens
        mfu = median([flops / t / rate for t, rate in zip(times[name], matmul_rates, strict=True)])
        slower = "" if name == GPT2 else f"{paired_ratio(times[name], times['absolute only']) - 1:+.1%}"
        lines.append(
            [
                name,
                f"{median(times[name]) * 1e3:.0f}",
                f"{tokens / median(times[name]):.0f}",
                f"{paired_ratio(times[GPT2], times[name]):.3f}",
                slower,
                f"{flops / median(times[name]) / 1e9:.1f}",
                f"{mfu:.1%}",
            ]
        )
    header = (
        f"Training step, fp32, {size.n_layer} layers, d={size.n_embd}, {size.n_head} heads, V={size.vocab_size}, "
        f"T={args.seq_len}, batch {args.batch}; {args.reps} rounds after {args.warmup} warm-up. "
        f"{MATMUL_SIZE}³ fp32 matmul: {median(matmul_rates) / 1e9:.1f} GFLOP/s."
    )
    headers = ["model", "ms/step", "tokens/s", "× GPT-2 tokens/s", "time vs absolute", "GFLOP/s", "MFU vs matmul"]
    return header + "\n\n" + table(headers, lines)


def ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}" if base > 0 and value == value else "n/a"


def scaling_table(args: argparse.Namespace) -> str:
    """tokens/s and peak memory against T, at a constant number of tokens per step (batch = tokens // T)."""
    seq_lens = [int(t) for t in args.seq_lens.split(",")]
    size = size_from(args, block_size=max(1024, *seq_lens))
    rows = {name: variants(size, args.rank)[name] for name in SCALING_ROWS}
    tokens = args.batch * args.seq_len
    timed, jobs = {}, {}
    for seq_len in seq_lens:
        batch = max(1, tokens // seq_len)
        fns = {name: step_function(size, overrides, batch, seq_len) for name, overrides in rows.items()}
        timed[seq_len] = (batch, alternate(fns, args.scaling_reps, 1))
        del fns
        for name, overrides in rows.items():
            jobs[seq_len, name] = MemoryJob(asdict(size), overrides, batch, seq_len, threads=args.threads)
    with ThreadPoolExecutor(args.memory_jobs) as pool:
        memory = dict(zip(jobs, pool.map(measure_memory, jobs.values()), strict=True))

    lines = []
    for seq_len, (batch, times) in timed.items():
        base = memory[seq_len, "absolute only"]
        for name in rows:
            used = memory[seq_len, name]
            lines.append(
                [
                    seq_len,
                    batch,
                    name,
                    f"{batch * seq_len / median(times[name]):.0f}",
                    f"{paired_ratio(times[name], times['absolute only']) - 1:+.1%}",
                    f"{used['peak_mb']:.0f}",
                    f"{used['peak_mb'] / base['peak_mb']:.2f}",
                    f"{used.get('heap_training_mb', float('nan')):.0f}",
                    ratio(used.get("heap_training_mb", float("nan")), base.get("heap_training_mb", float("nan"))),
                ]
            )
    header = (
        f"Scaling with T at {tokens} tokens per step, {args.scaling_reps} rounds after 1 warm-up. Memory: a fresh "
        "process per row builds the model and takes 2 AdamW steps; peak RSS is its VmHWM (imports included); "
        "'step heap' is the peak of glibc malloc's bytes in use during the second step, sampled after every aten op, "
        "minus those before the first step: tensors, gradients and optimizer state without the pages the allocator "
        "keeps after a free."
    )
    headers = [
        "T",
        "batch",
        "model",
        "tokens/s",
        "time vs absolute",
        "peak RSS MiB",
        "RSS × absolute",
        "step heap MiB",
        "heap × absolute",
    ]
    return header + "\n\n" + table(headers, lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_size_arguments(parser, Size())
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rank", type=int, default=64, help="n_embd_wte of the factorized rows")
    parser.add_argument("--reps", type=int, default=7, help="timed rounds (every model once per round)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument("--rows", default=None, help="comma-separated row names to time (with 'absolute only')")
    parser.add_argument("--seq-lens", default=None, help="comma-separated T values for the scaling table")
    parser.add_argument("--scaling-reps", type=int, default=3)
    parser.add_argument("--memory-jobs", type=int, default=1, help="memory subprocesses run at once")
    parser.add_argument("--quick", action="store_true", help="a tiny size and few rounds: checks that it all runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.layers, args.d, args.heads, args.vocab = 2, 64, 2, 512
        args.seq_len, args.batch, args.reps, args.warmup, args.scaling_reps = 32, 2, 2, 1, 1
        args.memory_jobs = max(args.memory_jobs, 4)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    print(machine_line(args.threads), end="\n\n")
    print(main_table(args), end="\n\n")
    if args.seq_lens:
        print(scaling_table(args))


if __name__ == "__main__":
    main()
