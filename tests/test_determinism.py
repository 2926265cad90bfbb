"""Determinism on CPU: the same seed gives bit-identical initial weights for every init variant (and every position
mechanism), a different seed gives different random tables, and training gives identical losses step for step."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import Trainer, TrainingArguments

from hf_embed import HfEmbedConfig, HfEmbedForCausalLM
from hf_embed.configuration_hf_embed import INIT_VARIANT_CHOICES

ROOT = Path(__file__).resolve().parent.parent
V, D = 24, 16
BASE = dict(vocab_size=V, n_embd=D, n_layer=2, n_head=2, block_size=16, pad_token_id=0)
RANDOM_VARIANTS = {"gaussian", "rand_hypercube", "unique_hypercube", "angle_hypersphere", "gaussian_norm_range"}
FIXED_VARIANTS = {"onehot", "hypercube", "numpy_import"}  # the table does not depend on the seed
# Every position mechanism and table layout at least once, so every parameter's initialiser is covered.
LAYOUTS = {
    "abs": {},
    "rope-fire-factorized": dict(
        use_rotary_embeddings=True, use_fire_embeddings=True, n_embd_wte=8, n_embd_wte_scale_tying=False
    ),
    "soap-shared-fire-untied-head": dict(
        use_abs_pos_embeddings=False,
        use_rotary_embeddings=True,
        rope_variant="soap",
        use_fire_embeddings=True,
        shared_fire_embeddings=True,
        wte_weight_tying=False,
        n_embd_wte=8,
    ),
}


def test_the_variants_here_are_every_choice():
    assert RANDOM_VARIANTS | FIXED_VARIANTS == set(INIT_VARIANT_CHOICES)


def _config(variant: str, layout: str, folder) -> HfEmbedConfig:
    kwargs = dict(BASE, **LAYOUTS[layout], init_variant=variant)
    dim = kwargs.get("n_embd_wte") or D
    if variant == "onehot":
        kwargs["vocab_size"] = dim  # onehot needs dim >= V
    if variant == "numpy_import":
        path = folder / f"table-{dim}.npy"
        np.save(path, np.random.default_rng(0).normal(size=(kwargs["vocab_size"], dim)).astype(np.float32))
        kwargs["init_wte_npy"] = str(path)
    if variant == "gaussian_norm_range":
        kwargs.update(gaussian_min_norm=0.8 * 0.02 * dim**0.5, gaussian_max_norm=1.2 * 0.02 * dim**0.5)
    return HfEmbedConfig(**kwargs)


def _weights(config: HfEmbedConfig, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return HfEmbedForCausalLM(config).state_dict()


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("variant", sorted(INIT_VARIANT_CHOICES))
def test_same_seed_gives_bit_identical_initial_weights(variant, layout, tmp_path):
    config = _config(variant, layout, tmp_path)
    first, second = _weights(config, 1234), _weights(config, 1234)
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name
    other = _weights(config, 4321)
    table_differs = not torch.equal(first["transformer.wte.weight"], other["transformer.wte.weight"])
    assert table_differs == (variant in RANDOM_VARIANTS)
    assert not torch.equal(first["transformer.h.0.attn.c_attn.weight"], other["transformer.h.0.attn.c_attn.weight"])


def test_initial_weights_are_the_same_in_another_process_with_another_hash_seed(tmp_path):
    """Nothing in the initialisation depends on set or dict-of-set order (PYTHONHASHSEED) or on the process."""
    config = _config("unique_hypercube", "soap-shared-fire-untied-head", tmp_path)
    config.save_pretrained(tmp_path / "config")
    script = (
        "import sys, torch, hf_embed; from safetensors.torch import save_file; "
        "config = hf_embed.HfEmbedConfig.from_pretrained(sys.argv[1]); torch.manual_seed(1234); "
        "model = hf_embed.HfEmbedForCausalLM(config); "
        "save_file({k: v.contiguous() for k, v in model.state_dict().items() if k != 'lm_head.weight' "
        "or not config.wte_weight_tying}, sys.argv[2])"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345", HF_HUB_OFFLINE="1")
    subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "config"), str(tmp_path / "w.safetensors")],
        check=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    there = load_file(tmp_path / "w.safetensors")
    here = _weights(config, 1234)
    assert there.keys() <= here.keys() and len(there) >= len(here) - 1
    for name, tensor in there.items():
        assert torch.equal(tensor, here[name]), name


def _manual_losses(layout: str, steps: int = 6) -> list[float]:
    """AdamW with dropout on, batches from a seeded generator: the loss of each step."""
    torch.manual_seed(99)
    model = HfEmbedForCausalLM(HfEmbedConfig(**BASE, **LAYOUTS[layout], dropout=0.1)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    data = torch.Generator().manual_seed(5)
    losses = []
    for _ in range(steps):
        ids = torch.randint(0, V, (4, 12), generator=data)
        loss = model(ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_same_seed_gives_identical_losses_for_the_first_steps(layout):
    first, second = _manual_losses(layout), _manual_losses(layout)
    assert first == second  # exact floats, not approximately
    assert len(set(first)) == len(first)  # the model is really learning step to step, not a constant


class _Blocks(torch.utils.data.Dataset):
    def __init__(self):
        self.blocks = torch.randint(0, V, (32, 12), generator=torch.Generator().manual_seed(3))

    def __len__(self):
        return len(self.blocks)

    def __getitem__(self, i):
        return {"input_ids": self.blocks[i], "labels": self.blocks[i]}


def _trainer_losses(output_dir, seed: int) -> list[float]:
    args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=5,
        per_device_train_batch_size=4,
        learning_rate=3e-3,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    torch.manual_seed(seed)  # the model is built before the Trainer: seed it as run_clm.py does (set_seed)
    model = HfEmbedForCausalLM(HfEmbedConfig(**BASE, **LAYOUTS["rope-fire-factorized"], dropout=0.1))
    trainer = Trainer(model=model, args=args, train_dataset=_Blocks())
    trainer.train()
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def test_trainer_with_the_same_seed_gives_identical_losses(tmp_path):
    first = _trainer_losses(tmp_path / "a", seed=11)
    second = _trainer_losses(tmp_path / "b", seed=11)
    assert len(first) == 5 and first == second
    assert _trainer_losses(tmp_path / "c", seed=12) != first  # the seed is what makes them equal
