"""Data for `run_clm.py`: the embedded default corpus, text files, a byte-level BPE tokenizer, fixed-length blocks.

A source is read as *records*: paragraphs of a `.txt` file (blank-line separated, line breaks kept) or rows of a
`.csv` / `.json` / `.jsonl` file or Hub dataset (the `text` column, else the first column). Rows are separate
documents, each followed by the end-of-text token; paragraphs of one text are joined by their blank line.
The token stream is cut into blocks of `block_size` tokens; the incomplete tail is dropped.
"""

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers.utils import logging

logger = logging.get_logger(__name__)

DEFAULT_CORPUS = "pydoc_data.topics"
END_OF_TEXT = "<|endoftext|>"
TEXT_EXTENSIONS = ("txt", "csv", "json", "jsonl")

__all__ = [
    "DEFAULT_CORPUS",
    "END_OF_TEXT",
    "BlockDataset",
    "TextSplits",
    "default_corpus_text",
    "group_blocks",
    "load_hub_splits",
    "paragraphs",
    "read_records",
    "split_records",
    "token_stream",
    "tokenizer_from_json",
    "train_bpe_tokenizer",
    "unigram_perplexity",
]


@dataclass
class TextSplits:
    """Records of the training and validation text, and whether each record is a separate document."""

    train: list[str]
    validation: list[str]
    documents: bool
    source: str


def default_corpus_text() -> str:
    """The text of CPython's help topics (`pydoc_data.topics`), about 450 kB of English and Python, sorted."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[name].strip() for name in sorted(topics))


def paragraphs(text: str) -> list[str]:
    """Blank-line separated paragraphs, each ending with its blank line, so joining them gives the text back."""
    parts = [p for p in text.replace("\r\n", "\n").split("\n\n") if p.strip()]
    return [p + "\n\n" for p in parts]


def read_records(path: str | Path, text_column: str = "text") -> tuple[list[str], bool]:
    """Records of a `.txt` (paragraphs), `.csv`, `.json` or `.jsonl` file (rows); and whether they are documents."""
    path = Path(path)
    extension = path.suffix.lstrip(".").lower()
    if extension not in TEXT_EXTENSIONS:
        raise ValueError(f"data file {str(path)!r} has extension {extension!r}; allowed: {list(TEXT_EXTENSIONS)}")
    if not path.is_file():
        raise ValueError(f"data file {str(path)!r} does not exist or is not a file")
    if extension == "txt":
        return paragraphs(path.read_text(encoding="utf-8")), False
    if extension == "csv":
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    else:
        rows = _json_rows(path)
    return [_row_text(row, text_column, path) for row in rows], True


def _json_rows(path: Path) -> list[dict]:
    """A JSON list of objects, an object whose `data` is such a list, or JSON lines."""
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
        raise ValueError(f"JSON file {str(path)!r} must hold objects (a list, JSON lines, or {{'data': [...]}})")
    return data


def _row_text(row: dict, text_column: str, path: Path) -> str:
    if not row:
        raise ValueError(f"data file {str(path)!r} has an empty row")
    value = row[text_column] if text_column in row else next(iter(row.values()))
    return "" if value is None else str(value)


def split_records(records: list[str], percentage: float) -> tuple[list[str], list[str]]:
    """Move `percentage` % of the records, evenly spaced through the source, into a validation split."""
    if not 0 <= percentage < 100:
        raise ValueError(f"validation_split_percentage={percentage!r} is not allowed: expected a number in [0, 100)")
    train, validation = [], []
    for i, record in enumerate(records):
        crosses = math.floor((i + 1) * percentage / 100) > math.floor(i * percentage / 100)
        (validation if crosses else train).append(record)
    return train, validation


def load_hub_splits(name: str, config_name: str | None, percentage: float, text_column: str) -> TextSplits:
    """Rows of a dataset on the Hub (needs the `datasets` package and a reachable Hub)."""
    try:
        import datasets
    except ImportError as error:
        raise ValueError(f"dataset_name={name!r} needs the `datasets` package: pip install datasets") from error
    raw = datasets.load_dataset(name, config_name)

    def texts(split: str) -> list[str]:
        column = text_column if text_column in raw[split].column_names else raw[split].column_names[0]
        return [str(t) for t in raw[split][column]]

    train = texts("train")
    if "validation" in raw:
        validation = texts("validation")
    else:
        train, validation = split_records(train, percentage)
    return TextSplits(train, validation, documents=True, source=name)


def train_bpe_tokenizer(texts: list[str], vocab_size: int, model_max_length: int):
    """A byte-level BPE tokenizer (GPT-2 style, `<|endoftext|>` as bos, eos and pad) trained on `texts`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + 1:
        raise ValueError(
            f"vocab_size={vocab_size} is too small for a byte-level BPE tokenizer: expected >= {len(alphabet) + 1} "
            "(256 bytes and the end-of-text token)"
        )
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[END_OF_TEXT], initial_alphabet=alphabet, show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer)
    return _wrap(tokenizer, model_max_length)


def tokenizer_from_json(text: str, model_max_length: int):
    """The tokenizer `train_bpe_tokenizer` made, from its `tokenizer.json` text (as sent between processes)."""
    from tokenizers import Tokenizer

    return _wrap(Tokenizer.from_str(text), model_max_length)


def _wrap(tokenizer, model_max_length: int):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=END_OF_TEXT,
        eos_token=END_OF_TEXT,
        pad_token=END_OF_TEXT,
        model_max_length=model_max_length,
    )


def token_stream(tokenizer, records: list[str], documents: bool) -> list[int]:
    """Token ids of the records, concatenated; each document is followed by the end-of-text token."""
    encoded = tokenizer(records, add_special_tokens=False, verbose=False)["input_ids"] if records else []
    stream: list[int] = []
    for ids in encoded:
        stream.extend(ids)
        if documents and tokenizer.eos_token_id is not None:
            stream.append(tokenizer.eos_token_id)
    return stream


def group_blocks(ids: list[int], block_size: int, max_blocks: int | None = None) -> torch.Tensor:
    """(N, block_size) int64 blocks of the stream; the incomplete tail is dropped."""
    n = len(ids) // block_size
    if max_blocks is not None:
        n = min(n, max_blocks)
    return torch.tensor(ids[: n * block_size], dtype=torch.long).view(n, block_size)


class BlockDataset(torch.utils.data.Dataset):
    """Blocks of token ids; each item is `{"input_ids", "labels"}` (the model shifts the labels itself)."""

    def __init__(self, blocks: torch.Tensor):
        self.blocks = blocks

    def __len__(self) -> int:
        return self.blocks.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.blocks[i], "labels": self.blocks[i]}


def unigram_perplexity(train_ids: list[int], eval_blocks: torch.Tensor, vocab_size: int) -> float:
    """Perplexity of add-one smoothed unigram frequencies of the training stream on the tokens a causal LM
    predicts in `eval_blocks` (every position but the first of each block): the baseline a model must beat."""
    counts = np.bincount(np.asarray(train_ids, dtype=np.int64), minlength=vocab_size).astype(np.float64) + 1.0
    log_probs = np.log(counts / counts.sum())
    targets = eval_blocks[:, 1:].reshape(-1).numpy()
    return float(np.exp(-log_probs[targets].mean()))
