"""Dataset registry and the in-memory splits every run trains and evaluates on.

Each loader returns raw splits as stored, (N, *obs_shape) arrays with the divisor that maps them
to [0, 1] (255 for 8-bit images); one place, :func:`load`, then applies the binarization and
checks what the likelihood needs, so every dataset is validated the same way. Observations keep
their shape, (N, C, H, W) for images, and 8-bit or binary sources stay uint8 in memory: they are
converted to floats per batch, on the device the batch goes to, so a dataset larger than the
GPU's memory trains. CIFAR-10 and SVHN are read, and the 8-bit data of discretized likelihoods
checked, in :mod:`pyro_vae.datasets_images`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import datasets_images as images
from .errors import PyroVAEError
from .registry import Registry

SPLITS = ("train", "valid", "test")
# Static binarizations and the fixed splits of unsplit datasets use their own seeds, so every
# run of the suite sees the same data whatever its --seed.
_SPLIT_SEED = 20140101
_BINARIZE_SEED = 1234


@dataclass
class Raw:
    """Unbinarized splits as loaded: x[split] of shape (N, *obs_shape), labels or None, and the
    divisor ``scale`` that maps the stored values to [0, 1] (1 for values used as stored)."""

    x: dict
    y: dict
    obs_shape: tuple
    scale: float = 1.0
    sd: dict | None = None  # per-row standard deviations of x: rows that are distributions (see Data)
    levels: int | None = None  # distinct values the source stores (256: 8-bit); None: a user's file


@dataclass
class Data:
    """Observations per split as stored, (N, *obs_shape), uint8 where the source is 8-bit or
    binary; ``scale[split]`` divides them into the values the model sees. Labels (N,) or None.

    ``sd[split]`` (same shape as x, or None) makes each row a distribution N(x, sd^2), the
    posterior of a first-stage model (``pyro-vae encode --what posterior``): training rows are
    drawn afresh each time they are used, as Kingma et al.'s M1+M2 trains M2 on new draws of M1's
    posterior; validation and test hold one fixed draw, as they hold one fixed binarization."""

    name: str
    x: dict
    y: dict
    obs_shape: tuple
    likelihood: str
    binarize: str
    scale: dict = field(default_factory=lambda: {s: 1.0 for s in SPLITS})
    sd: dict = field(default_factory=lambda: {s: None for s in SPLITS})

    @property
    def obs_dim(self) -> int:
        """Numbers per observation."""
        return int(np.prod(self.obs_shape))

    @property
    def labelled(self) -> bool:
        return all(self.y.get(s) is not None for s in SPLITS)

    def classes(self) -> int:
        """The number of label classes: every label an integer 0..C-1 and every class present in
        the training split, or a :class:`PyroVAEError`."""
        if not self.labelled:
            raise PyroVAEError(f"a model that takes labels (cvae, m2) needs labelled data, and {self.name} has no "
                               "labels")
        if any(self.y[s].dtype.is_floating_point or self.y[s].dtype == torch.bool for s in SPLITS):
            raise PyroVAEError(f"labels of {self.name} must be integers, got {self.y['train'].dtype}")
        low = min(int(self.y[s].min()) for s in SPLITS)
        found = max(int(self.y[s].max()) for s in SPLITS) + 1
        if low < 0:
            raise PyroVAEError(f"labels of {self.name} must be integers 0..C-1; found the negative label {low}")
        missing = sorted(set(range(found)) - set(self.y["train"].unique().tolist()))
        if missing:
            raise PyroVAEError(f"labels of {self.name} must be 0..C-1 with every class in the training split; "
                               f"classes {missing[:5]} are missing (largest label {found - 1})")
        return found

    def _float(self, x: torch.Tensor, split: str) -> torch.Tensor:
        x = x.to(torch.get_default_dtype() if not x.dtype.is_floating_point else x.dtype)
        return x / self.scale[split] if self.scale[split] != 1 else x

    def observations(self, split: str, device=None) -> torch.Tensor:
        """The whole split as the model scores it, on ``device``: for evaluation. The training split
        of dynamically binarized data gets one fixed binarization, like validation and test."""
        x = self._float(self.x[split].to(device), split)
        if split == "train" and self.binarize == "dynamic":
            x = torch.from_numpy(_binarize_static(x.cpu().numpy(), split)).to(x)
        if split == "train" and self.sd["train"] is not None:
            x = x + torch.from_numpy(_fixed_noise(self.sd["train"].numpy(), split)).to(x)
        return x

    def labels(self, split: str, device=None):
        y = self.y.get(split)
        return None if y is None else y.to(device)

    def batch(self, split: str, rows: torch.Tensor, device=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(x, y) of ``rows`` on ``device``, converted there; training rows of dynamically binarized
        data are resampled each time they are drawn (the global torch RNG, so runs are seeded)."""
        x = self._float(self.x[split][rows].to(device, non_blocking=True), split)
        if split == "train" and self.binarize == "dynamic":
            x = torch.bernoulli(x)
        if split == "train" and self.sd["train"] is not None:
            x = x + self.sd["train"][rows].to(x) * torch.randn_like(x)
        y = self.y.get(split)
        return x, (None if y is None else y[rows].to(device, non_blocking=True))

    def batches(self, split: str, batch_size: int, shuffle: bool = False, device=None):
        """Yield (x, y) batches of ``split``, moved to ``device`` one at a time."""
        n = self.x[split].shape[0]
        order = torch.randperm(n) if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            yield self.batch(split, order[start:start + batch_size], device)


DATASETS = Registry("dataset")


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
    x = bunch.images.astype(np.uint8)[:, None]  # grey levels 0..16
    xs, ys = _split_fixed(x, bunch.target.astype(np.int64), fractions=(0.7, 0.1, 0.2))
    return Raw(xs, ys, (1, 8, 8), scale=16.0, levels=17)


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
    x_train = train.data.numpy()[:, None]
    y_train = train.targets.numpy().astype(np.int64)
    # The last 10,000 training images are the validation set, as in the papers we compare to.
    xs = {"train": x_train[:50000], "valid": x_train[50000:], "test": test.data.numpy()[:, None]}
    ys = {"train": y_train[:50000], "valid": y_train[50000:], "test": test.targets.numpy().astype(np.int64)}
    return Raw(xs, ys, (1, 28, 28), scale=255.0, levels=256)


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
        xs = {s: np.unpackbits(d[s], axis=1, count=784).reshape(-1, 1, 28, 28) for s in SPLITS}
    return Raw(xs, {s: None for s in SPLITS}, (1, 28, 28), levels=2)


def _load_frey(data_dir: Path, download: bool) -> Raw:
    path = _require_file(data_dir / "FreyFaces" / "frey_faces.npz", "frey", download)
    with np.load(path) as d:
        x = d["ff"].T.reshape(-1, 1, 28, 20)
    xs, ys = _split_fixed(x, None)
    return Raw(xs, ys, (1, 28, 20), scale=255.0, levels=256)


VALID_LAST = 5000


def _split_last(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, name: str) -> Raw:
    """8-bit colour images whose training set's last ``VALID_LAST`` images are the validation set
    (the last tenth of a training set under 50,000 images, a subset or a test's small file)."""
    n_valid = min(VALID_LAST, x.shape[0] // 10)
    if n_valid < 1:
        raise PyroVAEError(f"{name} has {x.shape[0]} training images: too few to hold out a validation split")
    xs = {"train": x[:-n_valid], "valid": x[-n_valid:], "test": x_test}
    ys = {"train": y[:-n_valid], "valid": y[-n_valid:], "test": y_test}
    return Raw(xs, ys, (3, images.IMAGE_SIDE, images.IMAGE_SIDE), scale=255.0, levels=256)


def _load_cifar10(data_dir: Path, download: bool) -> Raw:
    return _split_last(*images.read_cifar10(data_dir, download), "cifar10")


def _load_svhn(data_dir: Path, download: bool) -> Raw:
    found = images.read_svhn(data_dir, download)
    return _split_last(*found["train"], *found["test"], "svhn")


def load_array_file(path: Path) -> Raw:
    """A user's ``.npy`` (the array x) or ``.npz`` (array ``x``, optional labels ``y``, optional
    ``split``: "train", "valid" or "test" per row; without it a fixed random 80/10/10 split).

    ``x`` is (N, D) vectors, (N, H, W) grey images or 4-d images, returned as (N, C, H, W). A 4-d
    uint8 ``x`` is channels-last (N, H, W, C) when its last axis has 1, 3 or 4 entries and its
    second has not (so (N, 32, 32, 3) is RGB and (N, 3, 32, 32) stays as it is); a 4-d float ``x``
    is always (N, C, H, W)."""
    if not path.is_file():
        raise PyroVAEError(f"data file not found: {path}")
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):  # a .npy holds the one array x; only an .npz is a context manager
            arrays = {"x": loaded}
        else:
            with loaded:
                arrays = {k: loaded[k] for k in loaded.files}
    except Exception as err:  # noqa: BLE001  numpy raises many types for truncated, corrupt or foreign files
        # (zlib.error for a broken deflate stream, tokenize.TokenError for a broken header, ...)
        if "pickled" in str(err):
            raise PyroVAEError(f"cannot read {path}: it is not a .npz/.npy file of arrays (numpy finds pickled "
                               "objects, or text, in it; the suite never loads pickles)") from None
        raise PyroVAEError(f"cannot read {path} as .npz/.npy: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'corrupt file'}") from None
    if "x" not in arrays:
        raise PyroVAEError(f"{path} has no array 'x' (found: {', '.join(sorted(arrays)) or 'nothing'})")
    x, y = arrays["x"], arrays.get("y")
    if x.ndim not in (2, 3, 4) or 0 in x.shape:
        raise PyroVAEError(f"'x' in {path} must have shape (N, D), (N, H, W) or (N, C, H, W); got {x.shape}")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise PyroVAEError(f"'x' in {path} must be real numbers, got dtype {x.dtype}")
    if y is not None:
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise PyroVAEError(f"'y' in {path} must have shape ({x.shape[0]},), got {y.shape}")
        if not (np.issubdtype(y.dtype, np.integer) or (np.issubdtype(y.dtype, np.floating) and np.isfinite(y).all()
                                                       and (y == np.round(y)).all())):
            raise PyroVAEError(f"'y' in {path} must hold integer labels, got dtype {y.dtype}"
                               + ("" if not np.issubdtype(y.dtype, np.floating) else " with non-integer values"))
    last = images.channels_last(x)

    def shaped(a):  # x or x_sd as (N, D) or (N, C, H, W)
        return a[:, None] if a.ndim == 3 else a.transpose(0, 3, 1, 2) if last else a

    x = shaped(x)
    obs_shape = tuple(x.shape[1:])
    # 8-bit arrays stay 8-bit in memory; values are used as stored
    x = x if x.dtype == np.uint8 else x.astype(np.float32)
    y = None if y is None else y.astype(np.int64)
    sd = arrays.get("x_sd")
    if sd is not None:
        if sd.shape != arrays["x"].shape or not np.issubdtype(sd.dtype, np.floating) or not np.isfinite(sd).all() \
                or (sd < 0).any():
            raise PyroVAEError(f"'x_sd' in {path} must be finite non-negative standard deviations of the shape of 'x' "
                               f"{arrays['x'].shape}, got shape {sd.shape} of dtype {sd.dtype}")
        sd = shaped(sd).astype(np.float32)
    split = arrays.get("split")

    def split_rows(values):  # (x, values) per split: the file's own splits, or the fixed random ones
        return _split_fixed(x, values) if split is None else _split_given(split, x, values, path)

    xs, ys = split_rows(y)
    return Raw(xs, ys, obs_shape, sd=None if sd is None else split_rows(sd)[1])


def _split_given(split: np.ndarray, x: np.ndarray, y, path: Path) -> tuple[dict, dict]:
    """The splits a file names row by row (``pyro-vae encode`` writes them, so a model trained on
    codes keeps the splits of the model that made them)."""
    if split.shape != (x.shape[0],) or split.dtype.kind != "U":
        raise PyroVAEError(f"'split' in {path} must name the split of every row of 'x' ({x.shape[0]} strings), got "
                           f"shape {split.shape} of dtype {split.dtype}")
    unknown = sorted(set(np.unique(split).tolist()) - set(SPLITS))
    if unknown:
        raise PyroVAEError(f"'split' in {path} holds {unknown[:3]}; its values must be {', '.join(SPLITS)}")
    missing = [s for s in SPLITS if not (split == s).any()]
    if missing:
        raise PyroVAEError(f"{path} has no rows of the {', '.join(missing)} split; a dataset needs all three "
                           "(encode with --split all)")
    return ({s: x[split == s] for s in SPLITS}, {s: (None if y is None else y[split == s]) for s in SPLITS})


DATASETS.add("digits", _load_digits, "scikit-learn's bundled 8x8 handwritten digits (1797 images, no download)",
             likelihood="bernoulli", binarize="dynamic")
DATASETS.add("mnist", _load_mnist, "MNIST 28x28, torchvision layout under DATA_DIR/MNIST/raw",
             likelihood="bernoulli", binarize="dynamic")
DATASETS.add("binarized-mnist", _load_binarized_mnist,
             "Larochelle-Murray statically binarized MNIST (DATA_DIR/binarized_mnist)", likelihood="bernoulli",
             binarize="none")
DATASETS.add("frey", _load_frey, "Frey faces 28x20 grey levels (DATA_DIR/FreyFaces)", likelihood="gaussian",
             binarize="none")
DATASETS.add("cifar10", _load_cifar10, "CIFAR-10 32x32 RGB, torchvision layout under DATA_DIR/cifar-10-batches-py",
             likelihood="dlogistic", binarize="none")
DATASETS.add("svhn", _load_svhn, "SVHN 32x32 RGB digits, torchvision's train/test_32x32.mat under DATA_DIR/svhn",
             likelihood="dlogistic", binarize="none")


def _is_file_name(name: str) -> bool:
    return name.endswith((".npz", ".npy"))


def resolve_defaults(name: str, likelihood: str | None, binarize: str | None, raw: Raw | None = None) -> tuple[str, str]:
    """The dataset's default likelihood and binarization where the user gave none."""
    if name in DATASETS:
        spec = DATASETS[name]
        return likelihood or spec.likelihood, binarize or spec.binarize
    binary = raw is not None and all(np.isin(v, (0, raw.scale)).all() for v in raw.x.values())
    return likelihood or ("bernoulli" if binary else "gaussian"), binarize or "none"


def check_name(name: str) -> None:
    if name not in DATASETS and not _is_file_name(name):
        raise PyroVAEError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)} or a path to a .npz/.npy file")


def _fixed_noise(sd: np.ndarray, split: str) -> np.ndarray:
    """One fixed draw of N(0, sd^2) per split, the same for every run."""
    return (np.random.default_rng([_BINARIZE_SEED, SPLITS.index(split), 1]).standard_normal(sd.shape) * sd).astype(
        np.float32)


def _binarize_static(x: np.ndarray, split: str) -> np.ndarray:
    rng = np.random.default_rng([_BINARIZE_SEED, SPLITS.index(split)])
    return (rng.random(x.shape, dtype=np.float32) < x).astype(np.float32)


def load(name: str, data_dir: str | Path | None = None, download: bool = False,
         likelihood: str | None = None, binarize: str | None = None) -> Data:
    """Load a registered dataset or a user's array file and check it against the likelihood.

    With ``binarize="dynamic"`` only the training split is resampled per batch; validation and
    test use one fixed binarization so bounds are comparable across runs. Binarization assumes one
    grey level per pixel: colour data (C > 1) is refused. A likelihood over 256 levels (registry
    meta ``levels=256``: dlogistic, dmol, categorical) needs 8-bit data, uint8 or integer-valued
    floats 0..255, without binarization or posterior rows; it sees them divided by 255.
    """
    check_name(name)
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    raw = DATASETS[name].build(data_dir, download) if name in DATASETS else load_array_file(Path(name))
    likelihood, binarize = resolve_defaults(name, likelihood, binarize, raw)
    levels = images.check_setup(name, likelihood, binarize, tuple(raw.obs_shape), raw.levels, raw.sd is not None)
    xs, scales = {}, {}
    for split in SPLITS:
        x, scale = raw.x[split], raw.scale
        if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
            raise PyroVAEError(f"the {split} split of {name} contains NaN or Inf values")
        if levels is not None:
            x, scale = images.discrete_values(x, scale, levels, name, split, likelihood)
        elif binarize != "none":
            if likelihood != "bernoulli":
                raise PyroVAEError(f"--binarize {binarize} needs --likelihood bernoulli (got {likelihood})")
            if x.min() < 0 or x.max() > scale:
                raise PyroVAEError(f"--binarize {binarize} needs values in [0, 1]; {name} has "
                                   f"[{x.min() / scale:g}, {x.max() / scale:g}]")
            if binarize == "static" or split != "train":
                x, scale = _binarize_static(x.astype(np.float32) / np.float32(scale), split).astype(np.uint8), 1.0
        elif likelihood == "bernoulli":
            if not np.isin(x, (0, scale)).all():
                raise PyroVAEError(
                    f"{name} is not binary but --likelihood bernoulli with --binarize none was asked; "
                    "use --binarize dynamic|static or --likelihood gaussian")
            x, scale = (x / scale).astype(np.uint8), 1.0  # 0/1, stored in a byte
        xs[split], scales[split] = torch.from_numpy(np.ascontiguousarray(x)), float(scale)
    ys = {s: (torch.from_numpy(raw.y[s]) if raw.y.get(s) is not None else None) for s in SPLITS}
    if raw.sd is not None and (binarize != "none" or likelihood == "bernoulli"):
        raise PyroVAEError(f"{name} holds posterior rows (x_sd): a continuous likelihood without --binarize scores "
                           "them")
    sds = {s: None for s in SPLITS}
    if raw.sd is not None:  # validation and test: one fixed draw; training: a new one per batch
        sds["train"] = torch.from_numpy(raw.sd["train"])
        for split in ("valid", "test"):
            xs[split] = xs[split] + torch.from_numpy(_fixed_noise(raw.sd[split], split))
    return Data(name, xs, ys, tuple(raw.obs_shape), likelihood, binarize, scales, sds)
