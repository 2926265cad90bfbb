"""Peak training memory and parameter count of the factorized token table, V=50257, d=768.

    python -m benchmarks.bench_memory            # GPT-2 small's shape, r ∈ {none, 256, 128, 64}, ~3 minutes
    python -m benchmarks.bench_memory --quick    # a tiny run (~20 s), for the tests

Each row is a fresh Python process (the peak RSS only grows, so one process cannot measure two configurations):
it builds the model and a batch, notes its RSS, runs 2 AdamW training steps (the first allocates the optimizer
state, the second peaks with parameters, optimizer state, activations and gradients all live), and reports
its peak RSS (VmHWM), and the peak of malloc's bytes in use during the last step ('step heap', see
`common.HeapPeak`). fp32, CPU.
"""

import argparse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

import torch

from benchmarks.common import MemoryJob, Size, add_size_arguments, machine_line, measure_memory, size_from, table
from hf_embed import HfEmbedConfig
from hf_embed.embeddings import embedding_parameter_count

GPT2 = "transformers GPT-2"


def parse_ranks(text: str) -> list[int | None]:
    return [None if r.strip().lower() == "none" else int(r) for r in text.split(",")]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_size_arguments(parser, Size(n_layer=12, n_embd=768, n_head=12, vocab_size=50257))
    parser.add_argument("--ranks", default="none,256,128,64", help="n_embd_wte values; 'none' is unfactorized")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2, help="training steps before the peak RSS is read")
    parser.add_argument("--memory-jobs", type=int, default=1, help="measuring processes run at once")
    parser.add_argument("--quick", action="store_true", help="a tiny size: checks that it all runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.layers, args.d, args.heads, args.vocab = 1, 128, 2, 4096
        args.seq_len, args.batch, args.memory_jobs = 16, 2, max(args.memory_jobs, 4)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    size = size_from(args, block_size=max(1024, args.seq_len))
    ranks = parse_ranks(args.ranks)
    jobs = {GPT2: MemoryJob(asdict(size), None, args.batch, args.seq_len, args.steps, args.threads)}
    for rank in ranks:
        jobs[f"r = {rank or 'none'}"] = MemoryJob(
            asdict(size), {"n_embd_wte": rank}, args.batch, args.seq_len, args.steps, args.threads
        )
    with ThreadPoolExecutor(args.memory_jobs) as pool:
        results = dict(zip(jobs, pool.map(measure_memory, jobs.values()), strict=True))

    base = results[f"r = {ranks[0] or 'none'}"]
    rows = []
    for (name, job), result in zip(jobs.items(), results.values(), strict=True):
        tokens = _config(size, job.overrides or {})  # GPT-2's token stack is the unfactorized, tied one
        heap, base_heap = result.get("heap_training_mb", float("nan")), base.get("heap_training_mb", float("nan"))
        rows.append(
            [
                name,
                f"{result['parameters']:,}",
                f"{embedding_parameter_count(tokens):,}",
                f"{result['parameters'] / base['parameters']:.3f}",
                f"{result['peak_mb']:.0f}",
                f"{result['peak_mb'] / base['peak_mb']:.3f}",
                f"{heap:.0f}",
                f"{heap / base_heap:.3f}",
            ]
        )
    reference = f"r = {ranks[0] or 'none'}"
    print(machine_line(args.threads), end="\n\n")
    print(
        f"Training memory, fp32: {size.n_layer} layers, d={size.n_embd}, {size.n_head} heads, V={size.vocab_size}, "
        f"T={args.seq_len}, batch {args.batch}, {args.steps} AdamW steps; tied head (and tied scale adapters). "
        "Peak RSS: VmHWM of the measuring process (imports included). Step heap: the peak of glibc malloc's "
        "bytes in use during the last step (sampled after every aten op) minus those before the first step: "
        "activations, gradients and AdamW state, without the pages the allocator keeps after a free.\n"
    )
    headers = [
        "model",
        "parameters",
        "token-embedding parameters",
        f"params × {reference}",
        "peak RSS MiB",
        f"RSS × {reference}",
        "step heap MiB",
        f"heap × {reference}",
    ]
    print(table(headers, rows))


def _config(size: Size, overrides: dict) -> HfEmbedConfig:
    return HfEmbedConfig(
        vocab_size=size.vocab_size, n_embd=size.n_embd, n_layer=size.n_layer, n_head=size.n_head, **overrides
    )


if __name__ == "__main__":
    main()
