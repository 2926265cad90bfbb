#!/usr/bin/env python
"""Length generalisation at small scale: train at 128 tokens, evaluate at 128, 256, 512 and 1024.

The FIRE paper's headline (Li et al. 2023, arXiv 2310.04418, Fig. 1): trained at one length and evaluated at longer
ones, FIRE degrades least. This study repeats that comparison on the default corpus (CPython's
`pydoc_data.topics`), for six positional schemes that differ in nothing else:

    absolute only   learned `wpe` with block_size 1024, trained on 128-token windows only (rows 128..1023 untrained)
    RoPE, SoAP, FIRE, shared FIRE, RoPE + FIRE   no absolute positions

One byte-level BPE tokenizer, trained once on the training split, serves every model; every model starts from
the same seed, sees the same 128-token blocks in the same order and takes the same optimizer steps (AdamW as
`run_clm.py` sets it: lr 1e-3, cosine with 5 % warm-up, weight decay 0.1 on matrices, gradient clipping 1.0).

Evaluation: the validation split, cut to a multiple of the longest length, is cut into non-overlapping windows of
each length, so every length scores the same text. Two numbers per (scheme, length):
    perplexity   exp(mean loss over every predicted token of every window): `run_clm.py --eval_lengths`'s number
                 and the paper's (loss averaged over the whole sequence);
    tail         exp(mean loss over the last 127 tokens of every 1024-token span (the tokens a window of the
                 shortest length predicts, 128 − 1): the same tokens at every length,
                 predicted from positions 1..127 of a 128-token window and from positions 897..1023 of a 1024-token
                 one, so only the context (and the positions) differ, and nothing is diluted by in-distribution tokens.

    python -m benchmarks.length_generalization              # the study, ~20-30 minutes on 2 CPU cores
    python -m benchmarks.length_generalization --quick      # a tiny model, a few steps: seconds (for the tests)

Writes OUT_DIR/results.json, OUT_DIR/table.md, OUT_DIR/length_generalization.png and the trained models to
OUT_DIR/models/ (`--reuse` evaluates those again without training).
"""

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here needs the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from transformers import get_cosine_schedule_with_warmup  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from hf_embed import HfEmbedConfig, HfEmbedForCausalLM  # noqa: E402
from hf_embed.data import (  # noqa: E402
    default_corpus_text,
    group_blocks,
    paragraphs,
    split_records,
    token_stream,
    train_bpe_tokenizer,
)


@dataclass(frozen=True)
class Settings:
    """Everything the study holds equal across schemes."""

    n_layer: int = 4
    n_embd: int = 128
    n_head: int = 4
    vocab_size: int = 2048
    train_length: int = 128
    eval_lengths: tuple[int, ...] = (128, 256, 512, 1024)
    steps: int = 300
    batch_size: int = 16
    learning_rate: float = 1e-3
    warmup_fraction: float = 0.05
    weight_decay: float = 0.1
    max_grad_norm: float = 1.0
    validation_percentage: float = 10.0
    max_eval_windows: int | None = None  # windows of the longest length kept (None: all)
    eval_batch_size: int = 4
    seed: int = 0
    soap_angles: int = 128  # SoAP's N (sym_rot_num_angles)
    fire_init_L: float = 128.0
    threads: int = 2
    scheme_names: tuple[str, ...] = field(default=())  # empty: every scheme


QUICK = dict(
    n_layer=1, n_embd=32, n_head=2, vocab_size=320, steps=2, batch_size=4, max_eval_windows=1, eval_batch_size=1
)


def schemes(settings: Settings) -> dict[str, dict]:
    """Scheme name -> HfEmbedConfig overrides. Only the first keeps learned absolute positions."""
    none = {"use_abs_pos_embeddings": False}
    rope = {**none, "use_rotary_embeddings": True}
    soap = {**rope, "rope_variant": "soap", "sym_rot_num_angles": settings.soap_angles}
    fire = {**none, "use_fire_embeddings": True, "fire_init_L": settings.fire_init_L}
    return {
        "absolute only": {},
        "RoPE": rope,
        f"SoAP (N={settings.soap_angles})": soap,
        "FIRE": fire,
        "shared FIRE": {**fire, "shared_fire_embeddings": True},
        "RoPE + FIRE": {**rope, **fire},
    }


# ------------------------------------------------------------------------------------------------------- data
@dataclass
class Data:
    train_blocks: torch.Tensor  # (N, train_length)
    validation_ids: torch.Tensor  # (n,), n a multiple of the longest evaluation length
    vocab_size: int
    train_tokens: int


def load_data(settings: Settings) -> Data:
    """The default corpus split by paragraphs, one BPE tokenizer trained on the training split, the token streams."""
    train_text, validation_text = split_records(paragraphs(default_corpus_text()), settings.validation_percentage)
    tokenizer = train_bpe_tokenizer(train_text, settings.vocab_size, model_max_length=max(settings.eval_lengths))
    train_ids = token_stream(tokenizer, train_text, documents=False)
    validation_ids = token_stream(tokenizer, validation_text, documents=False)
    longest = max(settings.eval_lengths)
    windows = len(validation_ids) // longest
    if settings.max_eval_windows is not None:
        windows = min(windows, settings.max_eval_windows)
    if windows == 0:
        raise ValueError(f"the validation split has {len(validation_ids)} tokens, fewer than one window of {longest}")
    return Data(
        train_blocks=group_blocks(train_ids, settings.train_length),
        validation_ids=torch.tensor(validation_ids[: windows * longest], dtype=torch.long),
        vocab_size=len(tokenizer),
        train_tokens=len(train_ids),
    )


def batch_order(n_blocks: int, settings: Settings) -> torch.Tensor:
    """Block indices of every step, (steps, batch): a fresh permutation per epoch, the same for every scheme."""
    generator = torch.Generator().manual_seed(settings.seed)
    needed = settings.steps * settings.batch_size
    epochs = [torch.randperm(n_blocks, generator=generator) for _ in range(-(-needed // n_blocks))]
    return torch.cat(epochs)[:needed].view(settings.steps, settings.batch_size)


# ---------------------------------------------------------------------------------------------- train, score
def build_model(settings: Settings, vocab_size: int, overrides: dict) -> HfEmbedForCausalLM:
    torch.manual_seed(settings.seed)
    config = HfEmbedConfig(
        vocab_size=vocab_size,
        n_layer=settings.n_layer,
        n_embd=settings.n_embd,
        n_head=settings.n_head,
        block_size=max(settings.eval_lengths),  # absolute positions exist up to the longest evaluation
        dropout=0.0,
        attn_implementation="sdpa",
        **overrides,
    )
    return HfEmbedForCausalLM(config)


def make_optimizer(model: torch.nn.Module, settings: Settings) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices and embeddings, none on biases, LayerNorm and FIRE's scalars."""
    decayed = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decayed, "weight_decay": settings.weight_decay}, {"params": other, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=settings.learning_rate)


def train(model: HfEmbedForCausalLM, data: Data, settings: Settings) -> float:
    """`settings.steps` steps on the shared batch order; the mean training loss of the last 10 % of steps."""
    model.train()
    optimizer = make_optimizer(model, settings)
    warmup = math.ceil(settings.warmup_fraction * settings.steps)
    schedule = get_cosine_schedule_with_warmup(optimizer, warmup, settings.steps)
    losses = []
    for indices in batch_order(len(data.train_blocks), settings):
        ids = data.train_blocks[indices]
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    tail = losses[-max(1, len(losses) // 10) :]
    return sum(tail) / len(tail)


@torch.no_grad()
def token_losses(model: HfEmbedForCausalLM, ids: torch.Tensor, length: int, batch_size: int) -> torch.Tensor:
    """Cross-entropy of every predicted token of `ids` cut into windows of `length`.  -> (windows, length − 1)

    Position t of a window is the prediction of token t + 1 from tokens 0..t."""
    model.eval()
    windows = ids.view(-1, length)
    losses = []
    for batch in windows.split(batch_size):
        logits = model(input_ids=batch).logits[:, :-1].float()
        losses.append(F.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none"))
    return torch.cat(losses)


def evaluate(model: HfEmbedForCausalLM, data: Data, settings: Settings) -> dict[str, dict[int, float]]:
    """{"perplexity": {length: ...}, "tail": {length: ...}}; see the module docstring."""
    longest, tail = max(settings.eval_lengths), min(settings.eval_lengths) - 1
    result: dict[str, dict[int, float]] = {"perplexity": {}, "tail": {}}
    for length in settings.eval_lengths:
        losses = token_losses(model, data.validation_ids, length, settings.eval_batch_size)
        result["perplexity"][length] = math.exp(losses.mean().item())
        last_windows = losses.view(-1, longest // length, length - 1)[:, -1]  # the last window of each span
        result["tail"][length] = math.exp(last_windows[:, -tail:].mean().item())
    return result


def trained_model(overrides: dict, data: Data, settings: Settings, folder: Path, reuse: bool) -> tuple:
    """(model, {"train_seconds", "final_train_loss"}): trained and saved to `folder`, or loaded from it (`reuse`)."""
    if reuse and (folder / "training.json").is_file():
        return HfEmbedForCausalLM.from_pretrained(folder), json.loads((folder / "training.json").read_text())
    start = time.perf_counter()
    model = build_model(settings, data.vocab_size, overrides)
    final_loss = train(model, data, settings)
    training = {"train_seconds": time.perf_counter() - start, "final_train_loss": final_loss}
    model.save_pretrained(folder)
    (folder / "training.json").write_text(json.dumps(training) + "\n", encoding="utf-8")
    return model, training


def run_scheme(name: str, overrides: dict, data: Data, settings: Settings, folder: Path, reuse: bool) -> dict:
    model, training = trained_model(overrides, data, settings, folder, reuse)
    start = time.perf_counter()
    scores = evaluate(model, data, settings)
    seconds = time.perf_counter() - start
    print(
        f"{name:<16} train {training['train_seconds']:6.0f} s  eval {seconds:4.0f} s  "
        f"final train loss {training['final_train_loss']:.3f}  "
        + "  ".join(f"{n}: {p:.1f}" for n, p in scores["perplexity"].items()),
        flush=True,
    )
    return {"overrides": overrides, **training, "eval_seconds": seconds, **scores}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("--", "-")


# -------------------------------------------------------------------------------------------------- report
def markdown_table(results: dict, metric: str, lengths: tuple[int, ...], train_length: int) -> str:
    head = [f"{n}{' (train)' if n == train_length else ''}" for n in lengths]
    lines = ["| scheme | " + " | ".join(head) + " |", "|---|" + "---:|" * len(lengths)]
    for name, row in results.items():
        cells = [f"{row[metric][n]:.2f}" for n in lengths]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(results: dict, data: Data, settings: Settings, wall_seconds: float) -> str:
    lengths = settings.eval_lengths
    windows = ", ".join(f"{len(data.validation_ids) // n} × {n}" for n in lengths)
    tokens = settings.steps * settings.batch_size * settings.train_length
    return "\n".join(
        [
            f"Trained at {settings.train_length} tokens: {settings.steps} steps × {settings.batch_size} blocks = "
            f"{tokens:,} tokens per model ({tokens / data.train_tokens:.1f} epochs of {data.train_tokens:,}); "
            f"{settings.n_layer} layers, d = {settings.n_embd}, {settings.n_head} heads, vocab {data.vocab_size}.",
            f"Validation: {len(data.validation_ids):,} tokens, the same at every length, in windows {windows}.",
            "",
            "Validation perplexity (every predicted token of every window):",
            "",
            markdown_table(results, "perplexity", lengths, settings.train_length),
            "",
            f"Perplexity of the last {min(lengths) - 1} tokens of every {max(lengths)}-token span only (the same "
            "tokens at every length; only the context before them grows):",
            "",
            markdown_table(results, "tail", lengths, settings.train_length),
            "",
            f"Wall time of this run {wall_seconds / 60:.1f} min ({settings.threads} threads); training seconds per "
            "scheme (as recorded when it was trained): "
            + ", ".join(f"{name} {row['train_seconds']:.0f}" for name, row in results.items())
            + ".",
        ]
    )


def plot(results: dict, settings: Settings, path: Path) -> None:
    """Perplexity against evaluation length, one line per scheme; two panels (all tokens, last 128 positions)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    lengths = list(settings.eval_lengths)
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    titles = {
        "perplexity": "all tokens of each window",
        "tail": f"last {min(lengths) - 1} tokens of each {max(lengths)}-token span",
    }
    for axis, (metric, title) in zip(axes, titles.items()):
        values = [row[metric][n] for row in results.values() for n in lengths]
        for name, row in results.items():
            axis.plot(lengths, [row[metric][n] for n in lengths], marker="o", label=name)
        axis.axvline(settings.train_length, color="grey", linestyle=":", linewidth=1)
        axis.set_xscale("log", base=2)
        if max(values) > 3 * min(values):  # a wide range: log scale, plain numbers at 1, 2, 5 × 10^k
            axis.set_yscale("log")
            axis.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            axis.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
            axis.yaxis.set_minor_formatter(NullFormatter())
        axis.set_xticks(lengths, [str(n) for n in lengths])
        axis.set_xlabel("evaluation context length (tokens)")
        axis.set_ylabel("validation perplexity")
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle(f"Trained at {settings.train_length} tokens ({settings.steps} steps), pydoc_data.topics")
    figure.savefig(path, dpi=120)
    plt.close(figure)


# ---------------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> tuple[Settings, Path, bool]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny model and a few steps: seconds, for the tests")
    parser.add_argument("--out_dir", default="output/length_generalization")
    parser.add_argument("--steps", type=int, help=f"optimizer steps per model (default {Settings.steps})")
    parser.add_argument("--eval_lengths", help="comma-separated (default 128,256,512,1024)")
    parser.add_argument("--soap_angles", type=int, help="SoAP's N, sym_rot_num_angles (default: the training length)")
    parser.add_argument("--fire_init_L", type=float, help="FIRE's L_init (default: the training length)")
    parser.add_argument("--schemes", help="comma-separated subset of the scheme names, e.g. 'RoPE,FIRE'")
    parser.add_argument("--reuse", action="store_true", help="evaluate OUT_DIR/models again, untrained")
    parser.add_argument("--threads", type=int, default=Settings.threads, help="torch.set_num_threads")
    args = parser.parse_args(argv)
    settings = replace(Settings(), **(QUICK if args.quick else {}), threads=args.threads)
    given = {"steps": args.steps, "soap_angles": args.soap_angles, "fire_init_L": args.fire_init_L}
    settings = replace(settings, **{k: v for k, v in given.items() if v is not None})
    if args.eval_lengths:
        settings = replace(settings, eval_lengths=tuple(int(n) for n in args.eval_lengths.split(",")))
    if args.schemes:
        settings = replace(settings, scheme_names=tuple(s.strip() for s in args.schemes.split(",")))
    if settings.steps < 1 or min(settings.eval_lengths) < 2:
        parser.error("--steps must be >= 1 and every evaluation length >= 2")
    return settings, Path(args.out_dir), args.reuse


def selected(settings: Settings) -> dict[str, dict]:
    every = schemes(settings)
    if not settings.scheme_names:
        return every
    unknown = [n for n in settings.scheme_names if n not in every]
    if unknown:
        raise ValueError(f"schemes={list(unknown)} are not allowed: expected names among {list(every)}")
    return {n: every[n] for n in settings.scheme_names}


def main(argv: list[str] | None = None) -> dict:
    settings, out_dir, reuse = parse_args(argv)
    hf_logging.set_verbosity_error()
    torch.set_num_threads(settings.threads)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data = load_data(settings)
    results: dict[str, dict] = {}
    for name, overrides in selected(settings).items():
        folder = out_dir / "models" / slug(name)
        results[name] = run_scheme(name, overrides, data, settings, folder, reuse)
        _write_json(out_dir / "results.json", settings, data, results, time.perf_counter() - start)
    wall = time.perf_counter() - start
    _write_json(out_dir / "results.json", settings, data, results, wall)
    text = report(results, data, settings, wall)
    (out_dir / "table.md").write_text(text + "\n", encoding="utf-8")
    plot(results, settings, out_dir / "length_generalization.png")
    print(text)
    print(f"Written to {out_dir}/: results.json, table.md, length_generalization.png")
    return {"settings": asdict(settings), "results": results, "wall_seconds": wall}


def _write_json(path: Path, settings: Settings, data: Data, results: dict, wall: float) -> None:
    windows = {n: len(data.validation_ids) // n for n in settings.eval_lengths}
    payload = {"settings": asdict(settings), "validation_windows": windows, "wall_seconds": wall, "schemes": results}
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1:])
