"""R-Drop on the scikit-learn digits: two dropout passes per batch and a symmetric-KL consistency term.

Trains the same MLP twice from the same initialisation — plain dropout, then R-Drop
(``CE(pass 1) + CE(pass 2) + alpha * rdrop_loss(pass 1, pass 2)``, Liang et al. 2021) — and prints the test
accuracy and the mean consistency term of each. Both passes run as one forward on the batch stacked twice
(two independent masks per row, one matmul), the usual way to implement R-Drop.

    python examples/rdrop.py            # 60 epochs
    python examples/rdrop.py --quick    # two epochs: a smoke run
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import dropkit.nn as dnn
from dropkit.losses import rdrop_loss


def load_digits(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return standardised train/test splits of the 8x8 digits (1797 images, 10 classes)."""
    from sklearn.datasets import load_digits as sk_digits

    data = sk_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.int64)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    cut = int(0.7 * len(x))
    mean, std = x[:cut].mean(0), x[:cut].std(0).clamp_min(1e-3)
    x = (x - mean) / std
    return x[:cut], y[:cut], x[cut:], y[cut:]


def make_model(p: float) -> nn.Module:
    """A 64-256-256-10 MLP with dropkit dropout at rate ``p`` after each hidden layer."""
    return nn.Sequential(
        nn.Linear(64, 256), nn.ReLU(), dnn.Dropout(p), nn.Linear(256, 256), nn.ReLU(), dnn.Dropout(p),
        nn.Linear(256, 10),
    )  # fmt: skip


def train(alpha: float, epochs: int, p: float, seed: int, data) -> tuple[float, float]:
    """Train with R-Drop weight ``alpha`` (0: plain dropout); return (test accuracy, mean consistency term)."""
    x_train, y_train, x_test, y_test = data
    torch.manual_seed(seed)
    model = make_model(p)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    ce = nn.CrossEntropyLoss()
    kl_total, batches = 0.0, 0
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x_train)).split(64):
            xb, yb = x_train[idx], y_train[idx]
            logits1, logits2 = model(torch.cat([xb, xb])).chunk(2)  # two passes, two masks per row
            kl = rdrop_loss(logits1, logits2, reduction="batchmean")
            loss = ce(logits1, yb) + ce(logits2, yb)
            if alpha:
                loss = loss + alpha * kl
            opt.zero_grad()
            loss.backward()
            opt.step()
            kl_total, batches = kl_total + float(kl.detach()), batches + 1
    model.eval()
    with torch.no_grad():
        accuracy = float((model(x_test).argmax(1) == y_test).float().mean())
    return accuracy, kl_total / max(1, batches)


def main(argv: list[str] | None = None) -> int:
    """Train plain dropout and R-Drop from one initialisation; print both test accuracies."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two epochs (smoke run)")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--alpha", type=float, default=1.0, help="weight of the consistency term")
    parser.add_argument("--p", type=float, default=0.3, help="dropout rate")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    epochs = 2 if args.quick else args.epochs
    data = load_digits(args.seed)
    print(f"digits: {len(data[0])} train / {len(data[2])} test, {epochs} epochs, p={args.p}, alpha={args.alpha}")
    for name, alpha in (("dropout", 0.0), ("R-Drop", args.alpha)):
        accuracy, kl = train(alpha, epochs, args.p, args.seed, data)
        print(f"{name:8s} test accuracy {accuracy:.4f}   mean symmetric KL between passes {kl:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
