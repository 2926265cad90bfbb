"""Shared helpers of the benchmarks: models of one size, timing in alternation, peak memory in a subprocess.

The machine these run on is shared and noisy, so nothing here compares numbers from two runs: every figure
that matters is a ratio between models timed in turn, in one process, after a warm-up.
"""

import argparse
import ctypes
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

# Read at import time by huggingface_hub / transformers: nothing here may touch the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from hf_embed import HfEmbedConfig, HfEmbedForCausalLM  # noqa: E402

hf_logging.set_verbosity_error()  # the benchmark's token ids are not a tokenizer's: silence the config warnings

MATMUL_SIZE = 2048  # the reference rate: one fp32 (2048 × 2048) @ (2048 × 2048) product


@dataclass(frozen=True)
class Size:
    """One architecture, shared by transformers' GPT-2 and every hf_embed variant it is compared with."""

    n_layer: int = 6
    n_embd: int = 384
    n_head: int = 6
    vocab_size: int = 8192
    block_size: int = 1024


def add_size_arguments(parser: argparse.ArgumentParser, defaults: Size) -> None:
    parser.add_argument("--layers", type=int, default=defaults.n_layer)
    parser.add_argument("--d", type=int, default=defaults.n_embd, help="n_embd")
    parser.add_argument("--heads", type=int, default=defaults.n_head)
    parser.add_argument("--vocab", type=int, default=defaults.vocab_size)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")


def size_from(args: argparse.Namespace, block_size: int = 1024) -> Size:
    return Size(args.layers, args.d, args.heads, args.vocab, block_size)


def gpt2_model(size: Size, seed: int = 0) -> GPT2LMHeadModel:
    """transformers' GPT-2 of `size`, dropout 0 everywhere, SDPA attention."""
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=size.vocab_size,
        n_embd=size.n_embd,
        n_layer=size.n_layer,
        n_head=size.n_head,
        n_positions=size.block_size,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        attn_implementation="sdpa",
    )
    return GPT2LMHeadModel(config)


def hf_embed_model(size: Size, seed: int = 0, **overrides) -> HfEmbedForCausalLM:
    """`HfEmbedForCausalLM` of `size` (GPT-2's defaults otherwise: gelu_new, tied head, dropout 0), SDPA attention."""
    torch.manual_seed(seed)
    kwargs = dict(
        vocab_size=size.vocab_size,
        n_embd=size.n_embd,
        n_layer=size.n_layer,
        n_head=size.n_head,
        block_size=size.block_size,
        dropout=0.0,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        attn_implementation="sdpa",
    )
    kwargs.update(overrides)
    return HfEmbedForCausalLM(HfEmbedConfig(**kwargs))


def build_model(size: Size, overrides: dict | None) -> torch.nn.Module:
    """GPT-2 when `overrides` is None, else hf_embed with those config overrides."""
    return gpt2_model(size) if overrides is None else hf_embed_model(size, **overrides)


def matmul_parameters(size: Size, n_embd_wte: int | None = None) -> int:
    """Weights that take part in a matmul once per token: 12·d² per block, the head (V × r), both scale adapters
    (a tied adapter is used twice, up and down). Embedding lookups and the FIRE MLP (per position pair) are not."""
    d, table = size.n_embd, n_embd_wte or size.n_embd
    adapters = 2 * d * n_embd_wte if n_embd_wte else 0
    return 12 * size.n_layer * d * d + size.vocab_size * table + adapters


def training_flops_per_token(size: Size, seq_len: int, n_embd_wte: int | None = None) -> int:
    """6 FLOPs per matmul parameter per token (forward + backward) plus 12·n_layer·d·T for attention."""
    return 6 * matmul_parameters(size, n_embd_wte) + 12 * size.n_layer * size.n_embd * seq_len


def matmul_operands(n: int = MATMUL_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(n, n, generator=generator), torch.randn(n, n, generator=generator)


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def alternate(fns: dict[str, Callable[[], object]], reps: int, warmup: int) -> dict[str, list[float]]:
    """Run every function `warmup` times, then `reps` rounds of each in turn; the seconds of every timed call.

    Taking turns spreads the machine's slow and fast moments over all contenders alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            times[name].append(seconds(fn))
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median over rounds of numerator[i] / denominator[i]: each ratio compares two calls made moments apart."""
    return statistics.median(a / b for a, b in zip(numerator, denominator, strict=True))


def machine_line(threads: int) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as file:
            cpu = next(line.split(":", 1)[1].strip() for line in file if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = " / ".join(f"{value:.1f}" for value in os.getloadavg())
    return (
        f"{datetime.date.today().isoformat()} · {os.cpu_count()} cores ({cpu}) · {threads} torch threads · "
        f"torch {torch.__version__} · transformers {transformers.__version__} · Python {platform.python_version()} · "
        f"load average {load} (1/5/15 min) at the start"
    )


def table(headers: list[str], rows: list[list[object]]) -> str:
    """A Markdown table; floats keep the precision they were formatted with by the caller."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
    ] + [("keepcost", ctypes.c_size_t)]


def _heap_reader() -> Callable[[], float] | None:
    """glibc's bytes in use (mallinfo2: heap chunks in use + mmapped chunks), in MiB; None where there is no glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
    except (OSError, AttributeError):
        return None

    def in_use() -> float:
        info = libc.mallinfo2()
        return (info.uordblks + info.hblkhd) / 2**20

    return in_use


class HeapPeak(TorchDispatchMode):
    """While active, the most bytes malloc had handed out after any aten op (forward and backward): the tensors'
    own peak, without the pages glibc keeps after a free (which the peak RSS counts)."""

    def __init__(self, in_use: Callable[[], float]):
        super().__init__()
        self.in_use, self.peak = in_use, in_use()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.peak = max(self.peak, self.in_use())
        return out


def rss_mb() -> float:
    """This process's resident set size now, in MiB."""
    with open("/proc/self/statm") as file:
        pages = int(file.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """The high-water mark of this process's resident set size, in MiB: VmHWM, which starts afresh at exec.
    (ru_maxrss does not: Linux carries the forking parent's peak into it, so a child started by a big parent
    would report the parent's peak.) ru_maxrss where /proc is missing."""
    try:
        with open("/proc/self/status") as file:
            return next(int(line.split()[1]) for line in file if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


@dataclass
class MemoryJob:
    """One training configuration measured in a fresh process: `overrides` None means transformers' GPT-2."""

    size: dict
    overrides: dict | None
    batch: int
    seq_len: int
    steps: int = 2
    threads: int = 2


def training_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, ids: torch.Tensor) -> None:
    """Forward with labels (the model's own shifted cross-entropy), backward, AdamW step, gradients dropped."""
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def make_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    """The optimizer every benchmark uses for every model: AdamW, PyTorch's default (foreach) implementation."""
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0)


def token_batch(vocab_size: int, batch: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab_size, (batch, seq_len), generator=torch.Generator().manual_seed(seed))


def run_memory_job() -> None:
    """Child side of `measure_memory`: build, train `steps` steps, print one JSON line of RSS figures."""
    job = MemoryJob(**json.loads(sys.argv[1]))
    torch.set_num_threads(job.threads)
    model = build_model(Size(**job.size), job.overrides).train()
    optimizer = make_optimizer(model)
    ids = token_batch(model.config.vocab_size, job.batch, job.seq_len)
    before, in_use = rss_mb(), _heap_reader()
    heap_before = in_use() if in_use else None
    for step in range(job.steps):
        if in_use and step == job.steps - 1:  # the last step: parameters, optimizer state, activations, gradients
            with HeapPeak(in_use) as heap:
                training_step(model, optimizer, ids)
        else:
            training_step(model, optimizer, ids)
    parameters = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    result = {"before_mb": before, "peak_mb": peak_rss_mb(), "parameters": parameters}
    if in_use:
        result.update(heap_before_mb=heap_before, heap_peak_mb=heap.peak)
    print(json.dumps(result))


def measure_memory(job: MemoryJob) -> dict:
    """Peak RSS of `job.steps` training steps, in a fresh Python process (a high-water mark never goes down, so
    every configuration needs its own process). Returns before_mb (RSS after building the model and batch), peak_mb,
    training_mb = peak − before (activations, gradients, optimizer state, allocator slack; 0 when the peak came
    before training, as the imports' can for a tiny model), parameters; with glibc also heap_training_mb, the
    peak of malloc's bytes in use during the last step minus those before the first (`HeapPeak`)."""
    code = "from benchmarks.common import run_memory_job; run_memory_job()"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(asdict(job))], capture_output=True, text=True, env=env, cwd=root
    )
    if done.returncode:
        raise RuntimeError(f"memory job {job} failed:\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["training_mb"] = max(result["peak_mb"] - result["before_mb"], 0.0)
    if "heap_peak_mb" in result:
        result["heap_training_mb"] = result["heap_peak_mb"] - result["heap_before_mb"]
    return result
