"""MC dropout and dropout surgery on real Hugging Face ``transformers`` models, built offline from tiny configs.

Bert and DistilBert sequence classifiers (hidden 32, 2 layers, 2 heads, intermediate 37, vocab 99, 64
positions), each with eager and SDPA attention; no weights are downloaded.
"""

from __future__ import annotations

import pytest
import torch
import transformers
from torch import nn

import dropkit.nn as dnn
from dropkit import mc, surgery

VOCAB, HIDDEN, LAYERS, HEADS, INTERMEDIATE, POSITIONS, LABELS = 99, 32, 2, 2, 37, 64, 3
KINDS = ("bert", "distilbert")
ATTENTIONS = ("eager", "sdpa")


def _build(kind: str, attention: str, hidden_dropout: float = 0.1, attention_dropout: float = 0.1) -> nn.Module:
    """A tiny sequence classifier in eval mode, with the given dropout rates and attention implementation."""
    torch.manual_seed(0)
    if kind == "bert":
        config = transformers.BertConfig(
            vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
            intermediate_size=INTERMEDIATE, max_position_embeddings=POSITIONS, num_labels=LABELS,
            hidden_dropout_prob=hidden_dropout, attention_probs_dropout_prob=attention_dropout,
            attn_implementation=attention,
        )  # fmt: skip
        model = transformers.BertForSequenceClassification(config)
    else:
        config = transformers.DistilBertConfig(
            vocab_size=VOCAB, dim=HIDDEN, n_layers=LAYERS, n_heads=HEADS, hidden_dim=INTERMEDIATE,
            max_position_embeddings=POSITIONS, num_labels=LABELS, dropout=hidden_dropout,
            attention_dropout=attention_dropout, seq_classif_dropout=hidden_dropout, attn_implementation=attention,
        )  # fmt: skip
        model = transformers.DistilBertForSequenceClassification(config)
    assert model.config._attn_implementation == attention
    return model.eval()


def _input_ids(batch: int = 4, length: int = 12) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(1))


def _logits(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=input_ids).logits


def _flags(model: nn.Module) -> list[tuple[str, bool]]:
    return [(name, m.training) for name, m in model.named_modules()]


def _layer_norm_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        f"{name}.{key}": value.clone()
        for name, m in model.named_modules()
        if isinstance(m, nn.LayerNorm)
        for key, value in m.state_dict().items()
    }


class LogitsOnly(nn.Module):
    """Wraps a Hugging Face classifier so that ``forward(input_ids)`` returns a plain logits tensor."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids).logits


models = pytest.mark.parametrize("kind", KINDS)
attentions = pytest.mark.parametrize("attention", ATTENTIONS)


@models
@attentions
def test_mc_dropout_samples_differ_and_eval_is_restored(kind, attention):
    model = _build(kind, attention)
    ids = _input_ids()
    flags, state, norms = _flags(model), {k: v.clone() for k, v in model.state_dict().items()}, _layer_norm_state(model)
    before = _logits(model, ids)
    assert torch.equal(before, _logits(model, ids))

    with mc.mc_dropout(model) as entered:
        assert entered is model
        assert model.training is False
        first, second = _logits(model, ids), _logits(model, ids)
    assert first.shape == before.shape == (ids.shape[0], LABELS)
    assert not torch.equal(first, second)

    assert _flags(model) == flags
    assert torch.equal(_logits(model, ids), before)
    assert torch.equal(_logits(model, ids), before)
    after_norms = _layer_norm_state(model)
    assert after_norms.keys() == norms.keys() and len(norms) > 0
    assert all(torch.equal(after_norms[k], v) for k, v in norms.items())
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


@models
@attentions
def test_mc_dropout_switches_only_dropout_paths(kind, attention):
    model = _build(kind, attention)
    with mc.mc_dropout(model):
        on = {name for name, training in _flags(model) if training}
        assert model.training is False
        assert all(isinstance(model.get_submodule(name), nn.Dropout) or "attention" in name for name in on)
        assert all(not m.training for m in model.modules() if isinstance(m, (nn.LayerNorm, nn.Linear, nn.Embedding)))
        assert {name for name, m in model.named_modules() if type(m) is nn.Dropout} <= on


@models
@attentions
def test_mc_dropout_activates_attention_probability_dropout(kind, attention):
    # Only the attention probabilities are dropped: samples can differ only if that path is on.
    model = _build(kind, attention, hidden_dropout=0.0, attention_dropout=0.5)
    ids = _input_ids()
    model.train()
    assert not torch.equal(_logits(model, ids), _logits(model, ids)), "reference: train mode drops attention"
    model.eval()
    before = _logits(model, ids)
    with mc.mc_dropout(model):
        first, second = _logits(model, ids), _logits(model, ids)
    assert not torch.equal(first, second), f"{kind}/{attention}: attention-probability dropout inactive in mc_dropout"
    assert torch.equal(_logits(model, ids), before)


@models
@attentions
def test_predict_wrapper_is_seeded_and_mean_is_a_distribution(kind, attention):
    model = LogitsOnly(_build(kind, attention)).eval()
    ids = _input_ids()
    flags = _flags(model)
    first = mc.predict(model, ids, samples=8, seed=0, keep_samples=True)
    again = mc.predict(model, ids, samples=8, seed=0, keep_samples=True)
    other = mc.predict(model, ids, samples=8, seed=1, keep_samples=True)
    assert first.mean.shape == (ids.shape[0], LABELS) and first.samples.shape == (8, ids.shape[0], LABELS)
    assert torch.equal(first.samples, again.samples) and torch.equal(first.mean, again.mean)
    assert not torch.equal(first.samples, other.samples)
    torch.testing.assert_close(first.mean.sum(1), torch.ones(ids.shape[0]))
    assert first.votes.sum(1).tolist() == [8] * ids.shape[0]
    assert bool((first.mutual_information >= 0).all())
    assert _flags(model) == flags


@models
@attentions
def test_swap_dropout_keeps_eval_outputs_and_replaces_every_torch_dropout(kind, attention):
    model = _build(kind, attention)
    ids = _input_ids()
    torch_dropouts = {name: m.p for name, m in model.named_modules() if type(m) is nn.Dropout}
    assert torch_dropouts
    before = _logits(model, ids)

    assert surgery.swap_dropout(model) is model
    assert torch.equal(_logits(model, ids), before)
    assert sum(type(m) is nn.Dropout for m in model.modules()) == 0
    swapped = {name: m.p for name, m in model.named_modules() if isinstance(m, dnn.Dropout)}
    assert swapped == torch_dropouts
    assert all(not m.training for m in model.modules())
    with mc.mc_dropout(model):
        assert not torch.equal(_logits(model, ids), _logits(model, ids))
    assert torch.equal(_logits(model, ids), before)
