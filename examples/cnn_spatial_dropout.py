"""Spatial dropout and DropBlock in a small CNN on the scikit-learn 8x8 digits, against element-wise and none.

Adjacent pixels of a convolutional feature map are strongly correlated, so zeroing single activations
(``Dropout``) removes little information, while zeroing whole channels (``Dropout2d``, Tompson et al. 2015)
forces the next layer not to rely on any one feature map. DropBlock (Ghiasi et al. 2018) takes the middle
road: it zeroes contiguous square regions of each map, so the information of a dropped unit cannot leak in
from its neighbours. The script trains the same CNN four times from one initialisation, with no dropout after
the convolutions, element-wise ``dropkit.nn.Dropout``, channel-wise ``dropkit.nn.Dropout2d`` and
``dropkit.nn.DropBlock2d`` (3x3 blocks on the 8x8 maps, 2x2 on the 4x4 maps), on a small training split (so
there is something to regularise), and prints test accuracy and loss of each. Every run is seeded: two runs
print the same numbers.

What to expect, honestly: these images are 8x8, so the feature maps are only 8x8 and 4x4 and the
correlation argument is weak; the four runs land within about a point of accuracy of each other (on the
machine this was written on, defaults: no dropout 0.958, Dropout 0.963, Dropout2d 0.958, DropBlock2d 0.965;
``--p 0.1``: 0.958, 0.956, 0.961, 0.961). Channel dropout and DropBlock pay off on the larger feature maps
of real vision models (the DropBlock paper uses 7x7 blocks in the last two stages of ResNet-50). The script
is a template for that comparison, not evidence for any of them.

    python examples/cnn_spatial_dropout.py            # 40 epochs on 500 training digits
    python examples/cnn_spatial_dropout.py --quick    # two epochs: a smoke run
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import dropkit.nn as dnn

KINDS = (("none", "no dropout"), ("element", "Dropout"), ("channel", "Dropout2d"), ("block", "DropBlock2d"))


def load_digits(train_size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``(x_train, y_train, x_test, y_test)``: 8x8 images as ``(N, 1, 8, 8)``, standardised on train."""
    from sklearn.datasets import load_digits as sk_digits

    data = sk_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.int64)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    mean, std = x[:train_size].mean(), x[:train_size].std()
    x = (x - mean) / std
    return x[:train_size], y[:train_size], x[train_size:], y[train_size:]


def make_cnn(kind: str, p: float) -> nn.Module:
    """Two 3x3 conv blocks (32 and 64 channels) with ``kind`` dropout after each, then a linear classifier.

    ``kind`` is ``"none"``, ``"element"`` (``dnn.Dropout``), ``"channel"`` (``dnn.Dropout2d``) or ``"block"``
    (``dnn.DropBlock2d``, with blocks of side 3 on the 8x8 maps of the first block and 2 on the 4x4 maps of the
    second). ``p`` is the fraction of units dropped in each case.
    """
    layers = {
        "none": lambda side: nn.Identity(),
        "element": lambda side: dnn.Dropout(p),
        "channel": lambda side: dnn.Dropout2d(p),
        "block": lambda side: dnn.DropBlock2d(p, block_size=3 if side >= 8 else 2),
    }
    drop = layers[kind]
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), drop(8),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), drop(4),
        nn.Flatten(), nn.Linear(64 * 4 * 4, 10),
    )  # fmt: skip


def train(kind: str, p: float, epochs: int, seed: int, data) -> tuple[float, float]:
    """Train one CNN with Adam in mini-batches of 64; return (test accuracy, test cross-entropy)."""
    x_train, y_train, x_test, y_test = data
    torch.manual_seed(seed)  # same initialisation, same batch order, same dropout seeds for every kind
    model = make_cnn(kind, p)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x_train)).split(64):
            opt.zero_grad()
            loss_fn(model(x_train[idx]), y_train[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        logits = model(x_test)
    return float((logits.argmax(1) == y_test).float().mean()), float(loss_fn(logits, y_test))


def main(argv: list[str] | None = None) -> int:
    """Train the four variants and print their test accuracy and loss."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two epochs on 200 digits (smoke run)")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--train-size", type=int, default=500, help="training digits (the rest are the test set)")
    parser.add_argument("--p", type=float, default=0.2, help="dropout (or DropBlock) rate after each conv block")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    epochs, train_size = (2, 200) if args.quick else (args.epochs, args.train_size)
    data = load_digits(train_size, args.seed)
    print(f"digits 8x8: {len(data[0])} train / {len(data[2])} test, {epochs} epochs, p={args.p}")
    for kind, label in KINDS:
        accuracy, loss = train(kind, args.p, epochs, args.seed, data)
        print(f"{label:11s} test accuracy {accuracy:.4f}   test loss {loss:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
