"""Greedy decoding with a KV cache: HfEmbedForCausalLM against transformers' GPT2LMHeadModel, in one process.

    python -m benchmarks.bench_generate           # 512 new tokens after a 64-token prompt, ~3 minutes
    python -m benchmarks.bench_generate --quick   # a tiny run (~15 s), for the tests

tokens/s is `model.generate(do_sample=False, min_new_tokens=max_new_tokens=N)`: new tokens over wall time,
prefill included. The per-token time at a position p is the median of 16 single-token forward calls with the
cache holding p, p+1, … tokens (a hand-written greedy loop). Models take turns, round after round.
"""

import argparse
import time

import torch

from benchmarks.common import (
    Size,
    add_size_arguments,
    alternate,
    build_model,
    machine_line,
    median,
    paired_ratio,
    size_from,
    table,
    token_batch,
)

GPT2 = "transformers GPT-2"
WINDOW = 16  # decode steps timed at each measured position


def variants() -> dict[str, dict | None]:
    """Row name -> HfEmbedConfig overrides (None: GPT-2). Each position mechanism on its own."""
    return {
        GPT2: None,
        "absolute": {},
        "RoPE": {"use_rotary_embeddings": True, "use_abs_pos_embeddings": False},
        "FIRE per layer": {"use_fire_embeddings": True, "use_abs_pos_embeddings": False},
        "FIRE shared": {"use_fire_embeddings": True, "shared_fire_embeddings": True, "use_abs_pos_embeddings": False},
    }


def generate_function(model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int):
    def run() -> None:
        out = model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            do_sample=False,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            pad_token_id=0,
        )
        assert out.shape[1] == prompt.shape[1] + new_tokens

    return run


@torch.no_grad()
def decode_step_times(model: torch.nn.Module, prompt: torch.Tensor, positions: list[int]) -> dict[int, float]:
    """Seconds of one greedy decode step with `p` cached tokens, median of WINDOW steps from p on, for each p."""
    out = model(input_ids=prompt, use_cache=True)
    cache, token = out.cache, out.logits[:, -1:].argmax(-1)
    steps: dict[int, list[float]] = {p: [] for p in positions}
    for position in range(prompt.shape[1], max(positions) + WINDOW):
        start = time.perf_counter()
        out = model(input_ids=token, cache=cache, use_cache=True)
        elapsed = time.perf_counter() - start
        cache, token = out.cache, out.logits[:, -1:].argmax(-1)
        for p in positions:
            if p <= position < p + WINDOW:
                steps[p].append(elapsed)
    return {p: median(times) for p, times in steps.items()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_size_arguments(parser, Size())
    parser.add_argument("--prompt", type=int, default=64, help="prompt tokens")
    parser.add_argument("--new-tokens", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--positions", default="64,512", help="cached lengths at which one decode step is timed")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="a tiny size and few rounds: checks that it all runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.layers, args.d, args.heads, args.vocab = 2, 64, 2, 512
        args.prompt, args.new_tokens, args.positions, args.reps, args.warmup = 8, 32, "8,24", 2, 1
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    positions = [int(p) for p in args.positions.split(",")]
    size = size_from(args, block_size=max(1024, args.prompt + args.new_tokens, max(positions) + WINDOW))
    models = {name: build_model(size, overrides).eval() for name, overrides in variants().items()}
    prompt = token_batch(size.vocab_size, args.batch, args.prompt)

    generate = {name: generate_function(model, prompt, args.new_tokens) for name, model in models.items()}
    times = alternate(generate, args.reps, args.warmup)
    per_position: dict[str, list[dict[int, float]]] = {name: [] for name in models}
    for _ in range(args.reps):
        for name, model in models.items():
            per_position[name].append(decode_step_times(model, prompt, positions))

    print(machine_line(args.threads), end="\n\n")
    print(
        f"Greedy decoding, fp32, KV cache, batch {args.batch}: {args.new_tokens} new tokens after a "
        f"{args.prompt}-token prompt; {size.n_layer} layers, d={size.n_embd}, {size.n_head} heads, "
        f"V={size.vocab_size}; {args.reps} rounds after {args.warmup} warm-up.\n"
    )
    first, last = positions[0], positions[-1]
    rows = []
    for name in models:
        step = {p: median([r[p] for r in per_position[name]]) for p in positions}
        rows.append(
            [
                name,
                f"{args.batch * args.new_tokens / median(times[name]):.0f}",
                f"{paired_ratio(times[GPT2], times[name]):.3f}",
                *(f"{step[p] * 1e3:.2f}" for p in positions),
                f"{step[last] / step[first]:.2f}",
            ]
        )
    headers = [
        "model",
        "new tokens/s",
        "× GPT-2",
        *(f"ms/token at {p}" for p in positions),
        f"time {last} / time {first}",
    ]
    print(table(headers, rows))
    print(
        f"\n{last}/{first} = {last / first:.0f}: a step whose cost grew like T² would take {(last / first) ** 2:.0f}× "
        f"as long at {last} as at {first}, one that grew like T {last / first:.0f}×."
    )


if __name__ == "__main__":
    main()
