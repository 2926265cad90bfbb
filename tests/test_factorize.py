"""factorize_embeddings: truncated SVD of the token table into the factorized form, and its CLI."""

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

import hf_embed
from hf_embed.factorize import factorize_embeddings, main

V, D = 48, 16


def decaying_table(rows: int, cols: int, generator: torch.Generator) -> torch.Tensor:
    """A (rows, cols) matrix with distinct, geometrically decaying singular values, as trained tables have."""
    k = min(rows, cols)
    left, _ = torch.linalg.qr(torch.randn(rows, k, generator=generator, dtype=torch.float64))
    right, _ = torch.linalg.qr(torch.randn(cols, k, generator=generator, dtype=torch.float64))
    return ((left * (0.5 * 0.7 ** torch.arange(k))) @ right.T).float()


def tiny_model(tied: bool = True, vocab_size: int = V, **overrides) -> hf_embed.HfEmbedForCausalLM:
    torch.manual_seed(0)
    config = hf_embed.HfEmbedConfig(
        vocab_size=vocab_size, n_embd=D, n_layer=2, n_head=2, block_size=32, wte_weight_tying=tied, **overrides
    )
    model = hf_embed.HfEmbedForCausalLM(config).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        model.transformer.wte.weight.copy_(decaying_table(vocab_size, config.token_table_dim, generator))
        if not tied:
            model.lm_head.weight.copy_(decaying_table(vocab_size, config.token_table_dim, generator))
    return model


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


IDS = torch.randint(0, V, (3, 20), generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize(
    "tied, positions",
    [
        (True, {}),
        (False, {}),
        (True, dict(use_abs_pos_embeddings=False, use_rotary_embeddings=True, use_fire_embeddings=True)),
    ],
)
def test_full_rank_reproduces_the_logits(tied, positions):
    model = tiny_model(tied, **positions)
    factorized = factorize_embeddings(model, D).eval()
    assert factorized.config.n_embd_wte == D
    torch.testing.assert_close(logits(factorized, IDS), logits(model, IDS), atol=1e-4, rtol=0)


def test_a_converted_gpt2_factorizes_at_full_rank_to_gpt2s_logits():
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_embd=D, n_layer=2, n_head=2, n_positions=32)).eval()
    factorized = factorize_embeddings(hf_embed.convert_gpt2(gpt2), D).eval()
    torch.testing.assert_close(logits(factorized, IDS), logits(gpt2, IDS), atol=1e-4, rtol=0)


@pytest.mark.parametrize("tied", [True, False])
def test_logit_error_decreases_monotonically_with_rank(tied):
    model = tiny_model(tied)
    reference = logits(model, IDS)
    errors = [(logits(factorize_embeddings(model, r), IDS) - reference).pow(2).mean().sqrt() for r in range(1, D + 1)]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-5


def test_tied_adapter_reproduces_the_best_rank_r_table():
    model = tiny_model(tied=True)
    table = model.transformer.wte.weight.detach().double()
    u, s, vh = torch.linalg.svd(table, full_matrices=False)
    for rank in (1, 4, 9):
        factorized = factorize_embeddings(model, rank)
        state = factorized.state_dict()
        assert "transformer.scale_down.weight" not in state
        assert factorized.lm_head.weight is factorized.transformer.wte.weight
        w = state["transformer.scale_up.weight"].double()  # (d, R)
        assert w.shape == (D, rank) and state["transformer.wte.weight"].shape == (V, rank)
        torch.testing.assert_close(w.T @ w, torch.eye(rank, dtype=torch.float64), atol=1e-6, rtol=0)
        up = state["transformer.wte.weight"].double() @ w.T  # e ↦ e Wᵀ for every row
        best = (u[:, :rank] * s[:rank]) @ vh[:rank]
        torch.testing.assert_close(up, best, atol=1e-6, rtol=0)
        # Eckart–Young: the residual is exactly the discarded singular values
        assert torch.linalg.norm(table - up).item() == pytest.approx(s[rank:].norm().item(), rel=1e-5)


def test_untied_head_is_factorized_with_its_own_down_projection():
    model = tiny_model(tied=False)
    head = model.lm_head.weight.detach().double()
    u, s, vh = torch.linalg.svd(head, full_matrices=False)
    factorized = factorize_embeddings(model, 5)
    state = factorized.state_dict()
    assert factorized.config.n_embd_wte_scale_tying is False and factorized.config.wte_weight_tying is False
    down = state["transformer.scale_down.weight"].double()  # (d, R), h ↦ h W_down
    # logits = h W_down lm_headᵀ, so the effective head is lm_head W_downᵀ: the best rank-5 head
    torch.testing.assert_close(
        state["lm_head.weight"].double() @ down.T, (u[:, :5] * s[:5]) @ vh[:5], atol=1e-6, rtol=0
    )


def test_other_weights_are_copied_and_the_source_is_unchanged():
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    factorized = factorize_embeddings(model, 3)
    new = factorized.state_dict()
    for key, value in before.items():
        torch.testing.assert_close(model.state_dict()[key], value, atol=0, rtol=0)
        if key not in ("transformer.wte.weight", "lm_head.weight"):
            torch.testing.assert_close(new[key], value, atol=0, rtol=0)
    assert model.config.n_embd_wte is None


def test_saved_result_loads_with_the_auto_classes(tmp_path):
    factorized = factorize_embeddings(tiny_model(), 4)
    factorized.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, hf_embed.HfEmbedForCausalLM) and loaded.config.n_embd_wte == 4
    torch.testing.assert_close(logits(loaded, IDS), logits(factorized.eval(), IDS), atol=0, rtol=0)


def test_import_files_of_the_unfactorized_model_are_not_carried_over():
    model = tiny_model(import_wte_freeze=True)
    model.config.import_wte_npy = "wte.npy"  # the (V, d) file that built it
    factorized = factorize_embeddings(model, 4)
    assert factorized.config.import_wte_npy is None and factorized.config.import_wte_freeze is False


def test_cli_writes_a_loadable_factorized_model(tmp_path, capsys):
    model = tiny_model()
    model.save_pretrained(tmp_path / "src")
    assert main([str(tmp_path / "src"), str(tmp_path / "dst"), "--n_embd_wte", "6"]) == 0
    assert f"{V * D} -> {V * 6 + D * 6}" in capsys.readouterr().out
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "dst").eval()
    torch.testing.assert_close(logits(loaded, IDS), logits(factorize_embeddings(model, 6), IDS), atol=1e-6, rtol=0)
    assert main([str(tmp_path / "src"), str(tmp_path / "dst"), "--n_embd_wte", "6"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_cli_names_the_bad_argument(tmp_path, capsys):
    assert main([str(tmp_path / "missing"), str(tmp_path / "dst"), "--n_embd_wte", "4"]) == 2
    assert "SRC_DIR" in capsys.readouterr().err
    tiny_model().save_pretrained(tmp_path / "src")
    assert main([str(tmp_path / "src"), str(tmp_path / "dst"), "--n_embd_wte", "0"]) == 2
    assert "n_embd_wte=0" in capsys.readouterr().err
    assert not (tmp_path / "dst").exists()


def test_an_already_factorized_model_is_refused():
    with pytest.raises(ValueError, match=r"already factorized \(n_embd_wte=8\)"):
        factorize_embeddings(tiny_model(n_embd_wte=8), 4)


@pytest.mark.parametrize("rank", [0, -1, 13, D, True, 2.0, None])
def test_rank_outside_one_to_min_vocab_and_width_is_refused(rank):
    model = tiny_model(vocab_size=12)  # min(V, d) = 12 < d
    with pytest.raises(ValueError, match=r"n_embd_wte=.* expected an integer in \[1, 12\]"):
        factorize_embeddings(model, rank)
