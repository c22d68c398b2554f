"""Datasets for the demo: scikit-learn's bundled digits, MNIST and Fashion-MNIST from IDX files, and shifts.

- ``digits`` ships inside scikit-learn (8×8 images, 1,797 of them): no download, always available.
- ``mnist`` / ``fashion-mnist`` are read from the four official IDX files (gzipped or not) found in
  ``--data-dir``, in the cache (``$DROPKIT_DATA`` or ``~/.cache/dropkit/<name>``), or — for Fashion-MNIST —
  where Debian's ``dataset-fashion-mnist`` package installs them; if none has them, they are downloaded into
  the cache and their MD5 checked against the published checksums. Without network the error says where the
  files were looked for.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["Dataset", "DataError", "DATASETS", "load", "read_idx", "write_idx", "rotate", "add_noise"]

DATASETS = ("digits", "mnist", "fashion-mnist")
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
#: MD5 of the official gzipped files (the checksums torchvision and the datasets' authors publish).
MD5 = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
}
MIRRORS = {
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/",),
    "fashion-mnist": ("https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",),
}
SYSTEM_DIRS = {"fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),), "mnist": ()}


class DataError(RuntimeError):
    """A dataset cannot be found, downloaded or read."""


@dataclass
class Dataset:
    """Images flattened to ``(N, H·W)`` float32 in ``[0, 1]`` with int64 labels, split into train and test."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    image_shape: tuple[int, int]
    classes: int = 10

    @property
    def features(self) -> int:
        """Number of input features (pixels)."""
        return self.x_train.shape[1]


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw): the big-endian format of MNIST, dtype and shape from its header."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"read_idx: {path} is not an IDX file (bad magic number).")
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if data[2] not in dtypes:
        raise DataError(f"read_idx: {path} has an unknown IDX type code 0x{data[2]:02x}.")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(dtypes[data[2]])
    body = data[4 + 4 * ndim :]
    if len(body) != int(np.prod(shape)) * dtype.itemsize:
        raise DataError(f"read_idx: {path} is truncated: header says {shape}, got {len(body)} bytes of data.")
    return np.frombuffer(body, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (gzipped if ``path`` ends in ``.gz``); tests use it for small files."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())


def _cache_dir(name: str) -> Path:
    root = os.environ.get("DROPKIT_DATA")
    return Path(root) / name if root else Path.home() / ".cache" / "dropkit" / name


def _find(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(name: str, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for filename, md5 in MD5[name].items():
        path = target / filename
        if path.is_file() and _md5(path) == md5:
            continue
        errors = []
        for mirror in MIRRORS[name]:
            try:
                partial = path.with_suffix(".part")
                with urllib.request.urlopen(mirror + filename, timeout=30) as response, partial.open("wb") as out:
                    out.write(response.read())
            except OSError as error:
                errors.append(f"{mirror}: {error}")
                continue
            if _md5(partial) != md5:
                partial.unlink()
                errors.append(f"{mirror}{filename}: MD5 mismatch (expected {md5})")
                continue
            partial.rename(path)
            break
        else:
            raise DataError(f"could not download {filename}: " + "; ".join(errors))


def _idx_dir(name: str, data_dir: str | Path | None, download: bool) -> Path:
    """Return a folder holding all four IDX files of ``name``, downloading them into the cache if allowed."""
    places = ([Path(data_dir)] if data_dir is not None else []) + [_cache_dir(name), *SYSTEM_DIRS[name]]
    if data_dir is not None and not Path(data_dir).is_dir():
        raise DataError(f"--data-dir must be an existing folder, but got {str(data_dir)!r}.")
    for place in places:
        if all(_find(place, stem) for stem in FILES):
            return place
    if download:
        try:
            _download(name, _cache_dir(name))
            return _cache_dir(name)
        except DataError as error:
            reason = str(error)
    else:
        reason = "downloading is disabled"
    looked = ", ".join(str(p) for p in places)
    raise DataError(
        f"{name}: the IDX files ({', '.join(FILES)}, optionally .gz) were not found in {looked}, and {reason}. "
        f"Put them in a folder and pass --data-dir."
    )


def _split_digits(train_size: int, seed: int) -> Dataset:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    bunch = load_digits()
    x = torch.tensor(bunch.data, dtype=torch.float32) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.int64)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=g)
    # stratified: take the first train_size // 10 of each class (in the shuffled order) for training
    per_class = max(1, train_size // 10)
    train_idx = torch.cat([order[y[order] == c][:per_class] for c in range(10)])
    is_train = torch.zeros(len(x), dtype=torch.bool)
    is_train[train_idx] = True
    train_idx = train_idx[torch.randperm(len(train_idx), generator=g)]
    test_idx = order[~is_train[order]]
    return Dataset("digits", x[train_idx], y[train_idx], x[test_idx], y[test_idx], (8, 8))


def load(
    name: str = "digits",
    *,
    data_dir: str | Path | None = None,
    train_size: int | None = None,
    test_size: int | None = None,
    seed: int = 0,
    download: bool = True,
) -> Dataset:
    """Load a dataset by name.

    Args:
        name: ``"digits"``, ``"mnist"`` or ``"fashion-mnist"``.
        data_dir: Folder with the IDX files (MNIST / Fashion-MNIST).
        train_size: Training examples to keep (a stratified subset for digits, the first ``n`` otherwise);
            ``None`` keeps 300 for digits and all for the others.
        test_size: Test examples to keep (the first ``n``); ``None`` keeps all.
        seed: Seed of the digits split.
        download: Allow downloading MNIST / Fashion-MNIST into the cache.

    Raises:
        ValueError: If ``name`` is unknown.
        DataError: If the files cannot be found, downloaded or read.
    """
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, but got {name!r}.")
    if name == "digits":
        data = _split_digits(300 if train_size is None else train_size, seed)
    else:
        folder = _idx_dir(name, data_dir, download)
        arrays = [read_idx(_find(folder, stem)) for stem in FILES]  # type: ignore[arg-type]
        x_train, y_train, x_test, y_test = (torch.from_numpy(a.copy()) for a in arrays)
        h, w = x_train.shape[1:]
        flat = (lambda a: a.reshape(len(a), -1).float() / 255.0)  # noqa: E731
        data = Dataset(name, flat(x_train), y_train.long(), flat(x_test), y_test.long(), (h, w))
        if train_size is not None:
            data.x_train, data.y_train = data.x_train[:train_size], data.y_train[:train_size]
    if test_size is not None:
        data.x_test, data.y_test = data.x_test[:test_size], data.y_test[:test_size]
    return data


def rotate(x: torch.Tensor, image_shape: tuple[int, int], degrees: float) -> torch.Tensor:
    """Rotate flattened images by ``degrees`` (bilinear, zero fill): a distribution shift of the inputs."""
    h, w = image_shape
    theta = torch.deg2rad(torch.tensor(float(degrees)))
    c, s = torch.cos(theta), torch.sin(theta)
    matrix = torch.tensor([[c, -s, 0.0], [s, c, 0.0]]).unsqueeze(0).expand(len(x), 2, 3)
    grid = torch.nn.functional.affine_grid(matrix, [len(x), 1, h, w], align_corners=False)
    images = x.reshape(len(x), 1, h, w)
    return torch.nn.functional.grid_sample(images, grid, align_corners=False).reshape(len(x), -1)


def add_noise(x: torch.Tensor, std: float, seed: int = 0) -> torch.Tensor:
    """Add Gaussian pixel noise of standard deviation ``std`` and clip to ``[0, 1]``."""
    g = torch.Generator().manual_seed(seed)
    return (x + std * torch.randn(x.shape, generator=g)).clamp_(0.0, 1.0)
