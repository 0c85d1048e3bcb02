"""Colour and 8-bit images: the readers of CIFAR-10 and SVHN in torchvision's on-disk layout, the
layout rule of a user's image arrays, and the checks a discretized (256-level) likelihood makes.

:mod:`pyro_vae.data` registers the datasets and calls these; nothing here knows about splits.

The files are read here rather than through ``torchvision.datasets.CIFAR10`` / ``SVHN``: those
classes check the MD5 of every file against the published one inside ``__init__`` (and CIFAR's
``_load_meta``) before reading anything, so a subset, a re-saved copy or a test's small file
cannot be read without overriding private methods whose names change between versions; and
torchvision opens CIFAR's pickles with ``encoding="latin1"`` and indexes them by ``"data"``,
which fails on a batch pickled by Python 3 (keys ``b"data"``). Each format is a few lines of
numpy, and reading it ourselves lets every missing or malformed file be named in one error. The
file names and the downloads are still torchvision's (its class attributes and its downloader,
which verifies the MD5 of what it fetches), and only with ``--download``.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from .errors import PyroVAEError

IMAGE_SIDE = 32
CIFAR10_LABELS = 10


def _download(name: str, data_dir: Path) -> None:
    """Fetch ``name`` with torchvision into ``data_dir`` (only ever called for ``--download``).
    torchvision skips files already present with the published MD5 and verifies what it fetches."""
    try:
        if name == "cifar10":
            from torchvision.datasets import CIFAR10

            CIFAR10(str(data_dir), train=False, download=True)  # downloads and extracts all six batches
        else:
            from torchvision.datasets import SVHN
            from torchvision.datasets.utils import download_url

            for split in ("train", "test"):
                url, filename, md5 = SVHN.split_list[split]
                download_url(url, str(data_dir / "svhn"), filename, md5)
    except Exception as err:  # no network, a full disk, a bad checksum: urllib, OSError, RuntimeError
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PyroVAEError(f"--download of {name} into {data_dir} failed: {reason}") from None


def _missing(paths: list[Path], name: str, folder: Path, layout: str) -> None:
    absent = [p.name for p in paths if not p.is_file()]
    if absent:
        raise PyroVAEError(f"{name} not found: {folder} lacks {', '.join(absent)}; point --data-dir at the folder "
                           f"that holds {layout} (torchvision's layout) or pass --download")


def cifar10_paths(data_dir: Path) -> tuple[Path, list[Path], Path]:
    """(folder, the five training batches, the test batch), named as torchvision names them."""
    from torchvision.datasets import CIFAR10

    folder = data_dir / CIFAR10.base_folder  # cifar-10-batches-py
    return folder, [folder / name for name, _ in CIFAR10.train_list], folder / CIFAR10.test_list[0][0]


def read_cifar10(data_dir: Path, download: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test) of ``data_dir/cifar-10-batches-py/``: the pickled
    ``data_batch_1`` .. ``data_batch_5`` and ``test_batch``, each a dict with ``data`` (N, 3072)
    uint8, every row the 1024 red, then green, then blue values of a 32x32 image in row-major
    order, and ``labels`` (N ints 0..9). Images come back (N, 3, 32, 32) uint8, labels int64.
    ``batches.meta`` (class names only) is not needed. The batches are pickles, which can run code
    when loaded: read only files you trust (as with torchvision)."""
    if download:
        _download("cifar10", data_dir)
    folder, train, test = cifar10_paths(data_dir)
    _missing(train + [test], "cifar10", folder, "cifar-10-batches-py/")
    batches = [_cifar_batch(path) for path in train]
    x_test, y_test = _cifar_batch(test)
    return (np.concatenate([x for x, _ in batches]), np.concatenate([y for _, y in batches]), x_test, y_test)


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
    except Exception as err:  # unpickling raises nearly anything on a foreign or truncated file
        raise PyroVAEError(f"cannot read {path} as a pickled CIFAR-10 batch: {type(err).__name__}: {err}") from None
    if not isinstance(entry, dict):
        raise PyroVAEError(f"{path} is not a CIFAR-10 batch: it holds a {type(entry).__name__}, not a dict")
    # Python 2's pickles (the published files) give str keys under latin1; Python 3's give bytes
    entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
    data, labels = entry.get("data"), entry.get("labels")
    size = 3 * IMAGE_SIDE * IMAGE_SIDE
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != size:
        found = f"shape {data.shape} of dtype {data.dtype}" if isinstance(data, np.ndarray) else type(data).__name__
        raise PyroVAEError(f"{path} is not a CIFAR-10 batch: 'data' must be (N, {size}) uint8, got {found}")
    labels = np.asarray(labels if labels is not None else [])
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer) \
            or labels.min(initial=0) < 0 or labels.max(initial=0) >= CIFAR10_LABELS:
        raise PyroVAEError(f"{path} is not a CIFAR-10 batch: 'labels' must be {data.shape[0]} integers 0..9")
    return data.reshape(-1, 3, IMAGE_SIDE, IMAGE_SIDE), labels.astype(np.int64)


def read_svhn(data_dir: Path, download: bool) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"train": (x, y), "test": (x, y)} of ``data_dir/svhn/train_32x32.mat`` and
    ``test_32x32.mat`` (the root torchvision's SVHN is given is ``data_dir/svhn``): MATLAB files
    with ``X`` (32, 32, 3, N) uint8, height, width, RGB, image, and ``y`` (N, 1) with labels 1..10,
    10 for the digit 0. Images come back (N, 3, 32, 32) uint8, labels int64 with 10 mapped to 0,
    as torchvision maps them."""
    from torchvision.datasets import SVHN

    if download:
        _download("svhn", data_dir)
    folder = data_dir / "svhn"
    paths = {split: folder / SVHN.split_list[split][1] for split in ("train", "test")}
    _missing(list(paths.values()), "svhn", folder, "svhn/")
    return {split: _svhn_file(path) for split, path in paths.items()}


def _svhn_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    from scipy.io import loadmat

    try:
        mat = loadmat(str(path), variable_names=("X", "y"))
    except Exception as err:  # scipy raises ValueError, TypeError, NotImplementedError (v7.3), MatReadError
        raise PyroVAEError(f"cannot read {path} as SVHN's .mat file: {type(err).__name__}: {err}") from None
    x, y = mat.get("X"), mat.get("y")
    if x is None or x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (IMAGE_SIDE, IMAGE_SIDE, 3):
        found = "no X" if x is None else f"X of shape {x.shape} and dtype {x.dtype}"
        raise PyroVAEError(f"{path} is not SVHN's format: X must be (32, 32, 3, N) uint8, found {found}")
    n = x.shape[3]
    if y is None or y.size != n or not np.issubdtype(y.dtype, np.number) or not np.isin(y, np.arange(1, 11)).all():
        raise PyroVAEError(f"{path} is not SVHN's format: y must hold {n} labels 1..10 (10 for the digit 0)")
    labels = y.reshape(-1).astype(np.int64)
    labels[labels == 10] = 0
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)), labels  # (H, W, C, N) -> (N, C, H, W)


def channels_last(x: np.ndarray) -> bool:
    """Whether a user's array is (N, H, W, C) images: 4-d uint8 whose last axis has 1, 3 or 4
    entries (grey, RGB, RGBA) and whose second has not. Any other 4-d array is (N, C, H, W)."""
    return x.ndim == 4 and x.dtype == np.uint8 and x.shape[3] in (1, 3, 4) and x.shape[1] not in (1, 3, 4)


def likelihood_levels(likelihood: str):
    """The number of values per pixel a likelihood scores (its registry meta ``levels``: 256 for
    the discretized ones, 2 for bernoulli), or None for a continuous or unregistered one."""
    from .likelihoods import LIKELIHOODS

    entry = LIKELIHOODS.get(likelihood)
    return None if entry is None else entry.meta.get("levels")


def check_setup(name: str, likelihood: str, binarize: str, obs_shape: tuple, stored_levels, has_sd: bool):
    """The run-wide checks of what a dataset's pixels can be given; returns the number of levels
    the likelihood scores where that is not bernoulli's 2 (None: a continuous likelihood).

    Binarization draws one 0/1 value per grey level, so colour data (C > 1) is refused. A
    likelihood over ``levels`` values needs no binarization, no posterior rows, and a dataset whose
    stored values have as many levels (where it fixes them)."""
    channels = obs_shape[0] if len(obs_shape) == 3 else 1
    if binarize != "none" and channels > 1:
        from .likelihoods import LIKELIHOODS

        eight_bit = [n for n, entry in LIKELIHOODS.items() if entry.meta.get("levels") == 256]
        hint = f"--likelihood {' | '.join(eight_bit)} (8-bit pixels) or " if eight_bit else "--likelihood "
        raise PyroVAEError(f"--binarize {binarize} draws one 0/1 value per grey level, and {name} has {channels} "
                           f"channels (colour): pass --binarize none with {hint}gaussian")
    levels = None if likelihood == "bernoulli" else likelihood_levels(likelihood)
    if levels is None:
        return None
    what = _what(levels)
    if binarize != "none":
        raise PyroVAEError(f"--likelihood {likelihood} scores {what}, and --binarize {binarize} would make them 0/1: "
                           f"pass --binarize none")
    if has_sd:
        raise PyroVAEError(f"{name} holds posterior rows (x_sd), continuous draws around x, which --likelihood "
                           f"{likelihood} ({what}) cannot score; use --likelihood gaussian")
    if stored_levels is not None and stored_levels != levels:
        raise PyroVAEError(f"--likelihood {likelihood} scores {what}, and {name} has {stored_levels} levels "
                           f"(0..{stored_levels - 1}); choose another --likelihood")
    return levels


def discrete_values(x: np.ndarray, scale: float, levels: int, name: str, split: str,
                    likelihood: str) -> tuple[np.ndarray, float]:
    """(stored values, scale) of one split under a likelihood over ``levels`` values. The stored
    values must be the integers 0..levels-1: uint8, or floats holding only such integers (a
    user's file), with ``scale`` 1 (a user's file) or ``levels - 1`` (an 8-bit dataset). They are
    kept as uint8 and divided by ``levels - 1``: the model sees k / 255 for 8-bit pixels."""
    top = levels - 1
    if scale not in (1, top):
        raise PyroVAEError(f"--likelihood {likelihood} scores {_what(levels)}, and {name} stores values in "
                           f"0..{scale:g}")
    if x.dtype != np.uint8 or top < 255:
        if not (x == np.round(x)).all():
            bad = x[x != np.round(x)].flat[0]
            raise PyroVAEError(f"--likelihood {likelihood} scores {_what(levels)}, and the {split} split of {name} "
                               f"holds non-integer values (e.g. {bad:g}); store the images as uint8")
        if x.min() < 0 or x.max() > top:
            raise PyroVAEError(f"--likelihood {likelihood} scores {_what(levels)}, and the {split} split of {name} "
                               f"holds values in [{x.min():g}, {x.max():g}]")
    return (x if x.dtype == np.uint8 else x.astype(np.uint8)), float(top)


def _what(levels: int) -> str:
    return "8-bit pixels (integers 0..255)" if levels == 256 else f"pixels of {levels} levels (0..{levels - 1})"
