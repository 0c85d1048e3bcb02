"""Dataset registry and the in-memory splits every run trains and evaluates on.

Each loader returns raw splits with values in [0, 1] (or as stored, for a user's file); one place,
:func:`load`, then applies the binarization and checks what the likelihood needs, so every
dataset is validated the same way.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from .errors import PyroVAEError

SPLITS = ("train", "valid", "test")
# Static binarizations and the fixed splits of unsplit datasets use their own seeds, so every
# run of the suite sees the same data whatever its --seed.
_SPLIT_SEED = 20140101
_BINARIZE_SEED = 1234


@dataclass
class Raw:
    """Unbinarized splits as loaded: x[split] of shape (N, *obs_shape), labels or None."""

    x: dict
    y: dict
    obs_shape: tuple


@dataclass
class DatasetSpec:
    load: Callable[[Path, bool], Raw]
    likelihood: str
    binarize: str
    about: str


@dataclass
class Data:
    """Flattened float tensors per split, plus what a run needs to know about them."""

    name: str
    x: dict
    y: dict
    obs_shape: tuple
    likelihood: str
    binarize: str
    label_columns: int = 0

    @property
    def obs_dim(self) -> int:
        """Pixels per observation (a labelled row has ``label_columns`` more columns)."""
        return int(np.prod(self.obs_shape))

    def with_labels(self, classes: int | None = None) -> "Data":
        """Rows [pixels | one-hot label] for a model conditioned on the label, with ``classes``
        columns (default: the largest label + 1). One-hot columns stay 0/1 under dynamic
        binarization, so batches need no special case."""
        if any(self.y[s] is None for s in SPLITS):
            raise PyroVAEError(f"a conditional model needs labelled data, and {self.name} has no labels")
        found = max(int(self.y[s].max()) for s in SPLITS) + 1
        classes = classes or found
        if min(int(self.y[s].min()) for s in SPLITS) < 0 or found > classes:
            raise PyroVAEError(f"labels of {self.name} must be integers in [0, {classes}), found up to {found - 1}")
        x = {s: torch.cat([self.x[s], torch.nn.functional.one_hot(self.y[s], classes).to(self.x[s].dtype)], 1)
             for s in SPLITS}
        return replace(self, x=x, label_columns=classes)

    def to(self, device) -> "Data":
        move = lambda d: {k: (v.to(device) if v is not None else None) for k, v in d.items()}  # noqa: E731
        return replace(self, x=move(self.x), y=move(self.y))

    def batches(self, split: str, batch_size: int, shuffle: bool = False) -> Iterator[torch.Tensor]:
        """Yield batches of ``split``; training batches of dynamically binarized data are
        resampled each time they are drawn (the global torch RNG, so runs are seeded)."""
        x = self.x[split]
        n = x.shape[0]
        order = torch.randperm(n, device=x.device) if shuffle else None
        for start in range(0, n, batch_size):
            batch = x[order[start:start + batch_size]] if shuffle else x[start:start + batch_size]
            if split == "train" and self.binarize == "dynamic":
                batch = torch.bernoulli(batch)
            yield batch


def default_data_dir() -> Path:
    return Path(os.environ.get("PYRO_VAE_DATA", "data"))


def _split_fixed(x: np.ndarray, y, fractions=(0.8, 0.1, 0.1)) -> tuple[dict, dict]:
    """A fixed random split of an unsplit dataset (same for every run)."""
    n = x.shape[0]
    order = np.random.default_rng(_SPLIT_SEED).permutation(n)
    n_valid, n_test = int(round(n * fractions[1])), int(round(n * fractions[2]))
    if n - n_valid - n_test < 1 or n_valid < 1 or n_test < 1:
        raise PyroVAEError(f"dataset has {n} examples: too few to split into train/valid/test")
    parts = {"test": order[:n_test], "valid": order[n_test:n_test + n_valid], "train": order[n_test + n_valid:]}
    xs = {k: x[idx] for k, idx in parts.items()}
    ys = {k: (y[idx] if y is not None else None) for k, idx in parts.items()}
    return xs, ys


def _load_digits(data_dir: Path, download: bool) -> Raw:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.images.astype(np.float32) / 16.0
    xs, ys = _split_fixed(x, bunch.target.astype(np.int64), fractions=(0.7, 0.1, 0.2))
    return Raw(xs, ys, (1, 8, 8))


def _load_mnist(data_dir: Path, download: bool) -> Raw:
    from torchvision.datasets import MNIST

    raw = data_dir / "MNIST" / "raw"
    gz_present = all((raw / f"{name}.gz").is_file() for name in MNIST_FILES)
    try:
        # torchvision reads the uncompressed files; with verified .gz files beside them its
        # "download" only extracts them (no network), so that path is allowed without --download.
        fetch = download or (gz_present and not all((raw / name).is_file() for name in MNIST_FILES))
        train = MNIST(str(data_dir), train=True, download=fetch)
        test = MNIST(str(data_dir), train=False, download=False)
    except PermissionError:
        raise PyroVAEError(f"cannot extract MNIST in read-only {raw}; copy MNIST/raw to a writable --data-dir") from None
    except RuntimeError as err:
        if "not found" in str(err).lower():
            raise PyroVAEError(
                f"MNIST not found under {raw}; point --data-dir at a folder holding MNIST/raw or pass --download"
            ) from None
        raise PyroVAEError(f"MNIST could not be loaded from {raw}: {err}") from None
    except OSError as err:
        raise PyroVAEError(f"MNIST could not be loaded from {raw}: {err}") from None
    x_train = train.data.numpy().astype(np.float32) / 255.0
    y_train = train.targets.numpy().astype(np.int64)
    # The last 10,000 training images are the validation set, as in the papers we compare to.
    xs = {"train": x_train[:50000], "valid": x_train[50000:], "test": test.data.numpy().astype(np.float32) / 255.0}
    ys = {"train": y_train[:50000], "valid": y_train[50000:], "test": test.targets.numpy().astype(np.int64)}
    return Raw(xs, ys, (1, 28, 28))


MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _require_file(path: Path, name: str, download: bool) -> Path:
    if download:
        raise PyroVAEError(f"{name} cannot be downloaded by the suite; place it at {path}")
    if not path.is_file():
        raise PyroVAEError(f"{name} not found at {path}; point --data-dir at the folder that holds it")
    return path


def _load_binarized_mnist(data_dir: Path, download: bool) -> Raw:
    path = _require_file(data_dir / "binarized_mnist" / "binarized_mnist.npz", "binarized-mnist", download)
    with np.load(path) as d:
        xs = {s: np.unpackbits(d[s], axis=1, count=784).astype(np.float32).reshape(-1, 28, 28) for s in SPLITS}
    return Raw(xs, {s: None for s in SPLITS}, (1, 28, 28))


def _load_frey(data_dir: Path, download: bool) -> Raw:
    path = _require_file(data_dir / "FreyFaces" / "frey_faces.npz", "frey", download)
    with np.load(path) as d:
        x = d["ff"].T.reshape(-1, 28, 20).astype(np.float32) / 255.0
    xs, ys = _split_fixed(x, None)
    return Raw(xs, ys, (1, 28, 20))


def load_array_file(path: Path) -> Raw:
    """A user's ``.npy`` (the array x) or ``.npz`` (array ``x``, optional labels ``y``)."""
    if not path.is_file():
        raise PyroVAEError(f"data file not found: {path}")
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):  # a .npy holds the one array x; only an .npz is a context manager
            arrays = {"x": loaded}
        else:
            with loaded:
                arrays = {k: loaded[k] for k in loaded.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:  # truncated or foreign files
        raise PyroVAEError(f"cannot read {path} as .npz/.npy: {err}") from None
    if "x" not in arrays:
        raise PyroVAEError(f"{path} has no array 'x' (found: {', '.join(sorted(arrays)) or 'nothing'})")
    x, y = arrays["x"], arrays.get("y")
    if x.ndim not in (2, 3, 4) or x.shape[0] == 0 or (x.ndim == 4 and x.shape[1] != 1):
        raise PyroVAEError(f"'x' in {path} must have shape (N, D), (N, H, W) or (N, 1, H, W); got {x.shape}")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise PyroVAEError(f"'x' in {path} must be real numbers, got dtype {x.dtype}")
    if y is not None and (y.ndim != 1 or y.shape[0] != x.shape[0]):
        raise PyroVAEError(f"'y' in {path} must have shape ({x.shape[0]},), got {y.shape}")
    obs_shape = (x.shape[1],) if x.ndim == 2 else (1,) + tuple(x.shape[-2:])
    xs, ys = _split_fixed(x.astype(np.float32), None if y is None else y.astype(np.int64))
    return Raw(xs, ys, obs_shape)


DATASETS: dict[str, DatasetSpec] = {
    "digits": DatasetSpec(_load_digits, "bernoulli", "dynamic",
                          "scikit-learn's bundled 8x8 handwritten digits (1797 images, no download)"),
    "mnist": DatasetSpec(_load_mnist, "bernoulli", "dynamic", "MNIST 28x28, torchvision layout under DATA_DIR/MNIST/raw"),
    "binarized-mnist": DatasetSpec(_load_binarized_mnist, "bernoulli", "none",
                                   "Larochelle-Murray statically binarized MNIST (DATA_DIR/binarized_mnist)"),
    "frey": DatasetSpec(_load_frey, "gaussian", "none", "Frey faces 28x20 grey levels (DATA_DIR/FreyFaces)"),
}


def _is_file_name(name: str) -> bool:
    return name.endswith((".npz", ".npy"))


def resolve_defaults(name: str, likelihood: str | None, binarize: str | None, raw: Raw | None = None) -> tuple[str, str]:
    """The dataset's default likelihood and binarization where the user gave none."""
    if name in DATASETS:
        spec = DATASETS[name]
        return likelihood or spec.likelihood, binarize or spec.binarize
    binary = raw is not None and all(np.isin(v, (0.0, 1.0)).all() for v in raw.x.values())
    return likelihood or ("bernoulli" if binary else "gaussian"), binarize or "none"


def check_name(name: str) -> None:
    if name not in DATASETS and not _is_file_name(name):
        raise PyroVAEError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)} or a path to a .npz/.npy file")


def _binarize_static(x: np.ndarray, split: str) -> np.ndarray:
    rng = np.random.default_rng([_BINARIZE_SEED, SPLITS.index(split)])
    return (rng.random(x.shape, dtype=np.float32) < x).astype(np.float32)


def load(name: str, data_dir: str | Path | None = None, download: bool = False,
         likelihood: str | None = None, binarize: str | None = None) -> Data:
    """Load a registered dataset or a user's array file and check it against the likelihood.

    With ``binarize="dynamic"`` only the training split is resampled per batch; validation and
    test use one fixed binarization so bounds are comparable across runs.
    """
    check_name(name)
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    raw = DATASETS[name].load(data_dir, download) if name in DATASETS else load_array_file(Path(name))
    likelihood, binarize = resolve_defaults(name, likelihood, binarize, raw)
    xs = {}
    for split in SPLITS:
        x = raw.x[split].reshape(raw.x[split].shape[0], -1).astype(np.float32)
        if not np.isfinite(x).all():
            raise PyroVAEError(f"the {split} split of {name} contains NaN or Inf values")
        if binarize != "none":
            if likelihood != "bernoulli":
                raise PyroVAEError(f"--binarize {binarize} needs --likelihood bernoulli (got {likelihood})")
            if x.min() < 0 or x.max() > 1:
                raise PyroVAEError(f"--binarize {binarize} needs values in [0, 1]; {name} has [{x.min():g}, {x.max():g}]")
            if binarize == "static" or split != "train":
                x = _binarize_static(x, split)
        elif likelihood == "bernoulli" and not np.isin(x, (0.0, 1.0)).all():
            raise PyroVAEError(
                f"{name} is not binary but --likelihood bernoulli with --binarize none was asked; "
                "use --binarize dynamic|static or --likelihood gaussian"
            )
        xs[split] = torch.from_numpy(x)
    ys = {s: (torch.from_numpy(raw.y[s]) if raw.y.get(s) is not None else None) for s in SPLITS}
    return Data(name, xs, ys, tuple(raw.obs_shape), likelihood, binarize)
