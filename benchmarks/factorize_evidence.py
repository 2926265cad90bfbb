#!/usr/bin/env python
"""Evidence for `hf_embed.factorize`: shrink a trained model's embedding stack, then recover with a short fine-tune.

1. train a model with `run_clm.py` (the default corpus, CPython's `pydoc_data.topics`);
2. for R in {d, d/2, d/4, d/8}: factorize its token table by truncated SVD (`python -m hf_embed.factorize`),
   evaluate right away, fine-tune briefly, evaluate again;
3. the same short fine-tune of the unfactorized model is the control: it shows what the extra steps alone give.

Prints a markdown table (embedding parameters, validation perplexity after factorization and after the fine-tune,
and the command of each row). Every step is a subprocess; logs go to WORK_DIR/logs.

    python benchmarks/factorize_evidence.py                      # full default training, then 1-epoch fine-tunes
    python benchmarks/factorize_evidence.py --train_steps 40 --finetune_steps 10 --work_dir /tmp/fe   # a smoke run
"""

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work_dir", default="output/factorize_evidence", help="where every run is written")
    parser.add_argument("--train_steps", type=int, default=None, help="training steps (default: run_clm's epochs)")
    parser.add_argument("--finetune_steps", type=int, default=60, help="steps of each fine-tune (default: 60)")
    parser.add_argument("--ranks", default=None, help="comma-separated ranks R (default: d, d/2, d/4, d/8)")
    parser.add_argument("--reuse", action="store_true", help="keep runs whose results already exist in WORK_DIR")
    args = parser.parse_args(argv)
    if args.finetune_steps < 1 or (args.train_steps is not None and args.train_steps < 1):
        parser.error("--train_steps and --finetune_steps must be integers >= 1")
    return args


def run(command: list[str], log: Path, result: Path, reuse: bool) -> float:
    """Run one command from the repository root unless `reuse` and its `result` exists; return its seconds."""
    if reuse and result.exists():
        print(f"reusing {result}", flush=True)
        return 0.0
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"$ {shlex.join(command)}   (log: {log})", flush=True)
    start = time.time()
    with open(log, "w") as stream:
        completed = subprocess.run(command, cwd=ROOT, stdout=stream, stderr=subprocess.STDOUT)
    if completed.returncode != 0:
        sys.exit(f"failed with exit code {completed.returncode}: {shlex.join(command)}; see {log}")
    return time.time() - start


def perplexity(run_dir: Path) -> float:
    return json.loads((run_dir / "eval_results.json").read_text())["perplexity"]


def embedding_parameters(model_dir: Path) -> int:
    sys.path.insert(0, str(ROOT))
    from hf_embed import HfEmbedConfig, embedding_parameter_count

    return embedding_parameter_count(HfEmbedConfig.from_pretrained(model_dir))


def clm(*flags: str) -> list[str]:
    return [sys.executable, "run_clm.py", *flags]


def factorize_row(work: Path, base: Path, rank: int | None, args: argparse.Namespace) -> dict:
    """Factorize (unless rank is None: the control), evaluate, fine-tune; the row's numbers and commands."""
    name = "unfactorized" if rank is None else f"r{rank}"
    model, logs = base, work / "logs"
    commands = []
    if rank is not None:
        model = work / name
        command = [sys.executable, "-m", "hf_embed.factorize", str(base), str(model), "--n_embd_wte", str(rank)]
        run([*command, "--overwrite"], logs / f"{name}-factorize.log", model / "config.json", args.reuse)
        commands.append(command)
    evaluated, tuned = work / f"{name}-eval", work / f"{name}-finetune"
    eval_command = clm("--model_name_or_path", str(model), "--do_eval", "--output_dir", str(evaluated))
    run(eval_command, logs / f"{name}-eval.log", evaluated / "eval_results.json", args.reuse)
    tune_command = clm(
        "--model_name_or_path", str(model), "--do_train", "--do_eval", "--max_steps", str(args.finetune_steps),
        "--eval_steps", str(args.finetune_steps), "--save_strategy", "no", "--output_dir", str(tuned),
    )  # fmt: skip
    seconds = run(tune_command, logs / f"{name}-finetune.log", tuned / "eval_results.json", args.reuse)
    return {
        "rank": "unfactorized (control)" if rank is None else str(rank),
        "parameters": embedding_parameters(model),
        "after": perplexity(evaluated),
        "tuned": perplexity(tuned),
        "seconds": seconds,
        "commands": [*commands, eval_command, tune_command],
    }


def table(rows: list[dict], base_perplexity: float, train: list[str], args: argparse.Namespace) -> str:
    lines = [
        f"Trained with `{shlex.join(_relative(train))}`: validation perplexity {base_perplexity:.2f}. "
        f"Each fine-tune: {args.finetune_steps} steps with `run_clm.py`'s defaults.",
        "",
        "| R (`n_embd_wte`) | embedding parameters | perplexity after factorization | after fine-tune |",
        "|---|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(f"| {row['rank']} | {row['parameters']:,} | {row['after']:.2f} | {row['tuned']:.2f} |")
    lines += ["", "Commands of each row (the evaluation right after factorization, then the fine-tune):", ""]
    for row in rows:
        lines += [f"R = {row['rank']}:", "```bash", *(shlex.join(_relative(c)) for c in row["commands"]), "```"]
    return "\n".join(lines)


def _relative(command: list[str]) -> list[str]:
    shown = ["python" if part == sys.executable else part for part in command]
    return [str(Path(p).relative_to(ROOT)) if p.startswith(f"{ROOT}/") else p for p in shown]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = (ROOT / args.work_dir).resolve()
    base = work / "base"
    train = clm("--output_dir", str(base), "--save_strategy", "no")
    if args.train_steps is not None:
        train += ["--max_steps", str(args.train_steps)]
    run(train, work / "logs" / "base.log", base / "eval_results.json", args.reuse)
    config = json.loads((base / "config.json").read_text())
    d = config.get("n_embd", 768)
    ranks = [int(r) for r in args.ranks.split(",")] if args.ranks else [d, d // 2, d // 4, d // 8]
    rows = [factorize_row(work, base, None, args)]
    rows += [factorize_row(work, base, rank, args) for rank in ranks]
    text = table(rows, perplexity(base), train, args)
    (work / "table.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
