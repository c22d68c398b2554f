"""Character-level language model on Python's own docstrings, with and without dropkit's recurrent regularisers.

The corpus is generated on the spot from the running interpreter (the Zen of Python from ``this`` plus the
docstrings of a fixed list of stdlib modules and their public members), split 90/10 into train and
validation by position. One model shape (embedding → 1-layer LSTM → linear read-out) is trained with truncated
back-propagation through time under each regulariser:

- ``none``: no regularisation (``dropkit.nn.LSTM`` with every rate 0 *is* ``torch.nn.LSTM``);
- ``variational``: ``dropkit.nn.LSTM(dropout=…, recurrent_dropout=…, output_dropout=…)``, Gal & Ghahramani masks;
- ``weight-drop``: ``dropkit.nn.WeightDrop(torch.nn.LSTM, ["weight_hh_l0"], p)``, AWD-LSTM's DropConnect;
- ``zoneout``: a ``dropkit.nn.ZoneoutLSTMCell`` stepped over time (Krueger et al.: z_c = 0.5, z_h = 0.05).

It prints the validation perplexity (eval mode, the whole validation text) of each at the end of training.

Run::

    python examples/rnn_language_model.py            # about a few minutes on a laptop CPU
    python examples/rnn_language_model.py --quick    # seconds: tiny model, few steps (a smoke test)
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

import dropkit.nn as dnn

MODULES = ("textwrap", "string", "json", "functools", "itertools", "collections", "random", "fractions",
           "statistics", "heapq", "bisect", "difflib", "shlex", "argparse", "contextlib", "dataclasses", "pathlib",
           "enum", "shutil", "decimal", "calendar", "typing")  # fmt: skip
VARIANTS = ("none", "variational", "weight-drop", "zoneout")


def corpus() -> str:
    """Return the training text: the Zen of Python and the docstrings of a fixed list of stdlib modules."""
    import codecs
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # importing ``this`` prints the Zen; we want its text
        this = importlib.import_module("this")
    parts = [codecs.decode(this.s, "rot13")]
    for name in MODULES:
        module = importlib.import_module(name)
        parts.append(inspect.getdoc(module) or "")
        for attr in sorted(getattr(module, "__all__", [])):
            doc = inspect.getdoc(getattr(module, attr, None))
            if doc:
                parts.append(doc)
    return "\n\n".join(p for p in parts if p)


@dataclass
class Config:
    """Sizes and training schedule."""

    chars: int = 120_000  # corpus characters used (train + validation)
    embed: int = 32
    hidden: int = 256
    bptt: int = 64
    batch: int = 32
    steps: int = 600
    lr: float = 3e-3
    p: float = 0.1  # dropout, recurrent_dropout and output_dropout of the variational model
    weight_p: float = 0.5  # WeightDrop's p

    @classmethod
    def quick(cls) -> Config:
        """Seconds: a tiny model and a few steps (shows it runs, not that it helps)."""
        return cls(chars=6_000, embed=8, hidden=16, bptt=16, batch=8, steps=6)


class CharLM(nn.Module):
    """Embedding → LSTM (one of the variants) → linear read-out over the characters."""

    def __init__(self, vocab: int, cfg: Config, variant: str) -> None:
        super().__init__()
        self.variant = variant
        self.embed = nn.Embedding(vocab, cfg.embed)
        if variant == "variational":
            self.rnn = dnn.LSTM(cfg.embed, cfg.hidden, dropout=cfg.p, recurrent_dropout=cfg.p, output_dropout=cfg.p)
        elif variant == "weight-drop":
            self.rnn = dnn.WeightDrop(nn.LSTM(cfg.embed, cfg.hidden), ["weight_hh_l0"], p=cfg.weight_p)
        elif variant == "zoneout":
            self.rnn = dnn.ZoneoutLSTMCell(cfg.embed, cfg.hidden, zoneout_h=0.05, zoneout_c=0.5)
        else:
            self.rnn = dnn.LSTM(cfg.embed, cfg.hidden)
        self.head = nn.Linear(cfg.hidden, vocab)

    def forward(self, x: torch.Tensor, state=None):
        """Return logits ``(T, N, vocab)`` and the final state for the next chunk (detached by the caller)."""
        e = self.embed(x)
        if self.variant == "zoneout":
            outs = []
            for e_t in e.unbind(0):
                state = self.rnn(e_t, state)
                outs.append(state[0])
            out = torch.stack(outs)
        else:
            out, state = self.rnn(e, state)
        return self.head(out), state


def _batches(data: torch.Tensor, batch: int) -> torch.Tensor:
    """Cut a 1-D stream into ``batch`` parallel streams, shape ``(len, batch)``."""
    length = data.numel() // batch
    return data[: length * batch].view(batch, length).t().contiguous()


def _detach(state):
    if state is None:
        return None
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


@torch.no_grad()
def perplexity(model: CharLM, data: torch.Tensor, bptt: int) -> float:
    """Return exp(mean cross-entropy) of ``model`` (in eval) over ``data`` of shape ``(len, batch)``."""
    model.eval()
    total, count, state = 0.0, 0, None
    for i in range(0, data.shape[0] - 1, bptt):
        x, y = data[i : i + bptt], data[i + 1 : i + 1 + bptt]
        x = x[: y.shape[0]]
        logits, state = model(x, state)
        total += nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum")
        count += y.numel()
    return math.exp(total / count)


def train(variant: str, train_data: torch.Tensor, valid_data: torch.Tensor, vocab: int, cfg: Config) -> dict:
    """Train one variant from a fixed seed; return its validation perplexity and wall time."""
    torch.manual_seed(0)
    model = CharLM(vocab, cfg, variant)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    start, state, pos = time.perf_counter(), None, 0
    for _ in range(cfg.steps):
        if pos + cfg.bptt + 1 > train_data.shape[0]:
            pos, state = 0, None
        x, y = train_data[pos : pos + cfg.bptt], train_data[pos + 1 : pos + 1 + cfg.bptt]
        pos += cfg.bptt
        model.train()
        logits, state = model(x, _detach(state))
        loss = nn.functional.cross_entropy(logits.reshape(-1, vocab), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    seconds = time.perf_counter() - start
    return {
        "variant": variant,
        "train_ppl": perplexity(model, train_data, cfg.bptt),
        "valid_ppl": perplexity(model, valid_data, cfg.bptt),
        "seconds": seconds,
    }


def main(argv: Sequence[str] | None = None) -> list[dict]:
    """Train every variant and print a table of perplexities; return the rows."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, few steps: runs in seconds")
    parser.add_argument("--steps", type=int, help="training steps per variant")
    parser.add_argument("--p", type=float, help="rate of the variational model's three dropouts")
    parser.add_argument("--weight-p", type=float, help="WeightDrop's p")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    args = parser.parse_args(argv)
    cfg = Config.quick() if args.quick else Config()
    for name in ("steps", "p", "weight_p"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    text = corpus()[: cfg.chars]
    chars = sorted(set(text))
    ids = torch.tensor([chars.index(c) for c in text])
    split = int(0.9 * len(ids))
    train_data, valid_data = _batches(ids[:split], cfg.batch), _batches(ids[split:], max(1, cfg.batch // 4))
    print(f"corpus: {len(text)} characters, vocabulary {len(chars)}; hidden {cfg.hidden}, {cfg.steps} steps")
    rows = []
    for variant in args.variants:
        row = train(variant, train_data, valid_data, len(chars), cfg)
        rows.append(row)
        print(f"{variant:12s} train ppl {row['train_ppl']:7.3f}   valid ppl {row['valid_ppl']:7.3f}   "
              f"({row['seconds']:.1f} s)", flush=True)  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
