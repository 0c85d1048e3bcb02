"""Small feature networks for the registered image datasets, shipped with the package.

A sample-quality metric (:mod:`pyro_vae.sample_quality`) compares real and generated images in a
feature space. Papers use Inception-v3 features of 299x299 RGB images; these nets are instead
small CNNs trained here on the suite's own datasets, so the metrics need no download and read
8x8 and 28x28 grey images as they are. Their FIDs are comparable between runs scored with the same
net *version*, never with Inception FIDs in papers.

Each shipped net is an entry of :data:`FEATURE_NETS` (its ``build`` loads it) with the datasets it
serves, its file beside this module and that file's sha256; :func:`load` refuses a file whose
hash differs. ``python -m pyro_vae.features.train NAME`` remakes a shipped file (see
:mod:`pyro_vae.features.train`), and ``--dataset FILE.npz --out NET.pt`` trains a net on a user's
labelled images, read back with :func:`load_file`.

File format (``torch.save`` of a dict of plain values, read with ``weights_only=True``)::

    {"format": "pyro_vae.features/1", "name": str, "obs_shape": [C, H, W], "classes": K,
     "state": FeatureNet state dict, "test_accuracy": float, "seed": int, "torch": str,
     "trained_on": dataset name}

and optionally ``"test_accuracy_binarized"`` (a net trained on grey and binarized images).
"""

from __future__ import annotations

import io
from pathlib import Path

import torch
from torch import nn

from ..errors import PyroVAEError
from ..io import atomic_path, file_sha256
from ..registry import Registry

FORMAT = "pyro_vae.features/1"
HERE = Path(__file__).resolve().parent
_REQUIRED = ("format", "name", "obs_shape", "classes", "state", "test_accuracy", "seed", "torch", "trained_on")


class FeatureNet(nn.Module):
    """Three 3x3 convolutions (16, 32, 64 channels), each with batch normalization and a ReLU,
    2x2 max pools where the image is large enough, global average pooling to ``feature_dim`` = 64
    features, and a linear head to ``classes`` logits. Images (N, C, H, W) with values in [0, 1].

    A 28x28 image pools after the first and second convolutions (28 -> 14 -> 7), an 8x8 one only
    after the second (8 -> 4): pooling an 8x8 digit twice would leave 2x2 maps that no longer tell
    strokes apart. Batch normalization is what lets so small a net reach 99% on MNIST in a few
    epochs (without it, 97% after ten); in eval mode it applies the stored statistics, so an
    image's features never depend on the rest of its batch.
    """

    widths = (16, 32, 64)
    # the smallest side at which the pool after convolution i still leaves a useful map
    pool_from = (16, 4)

    def __init__(self, obs_shape, classes: int):
        super().__init__()
        self.obs_shape = tuple(int(s) for s in obs_shape)
        self.classes = int(classes)
        if len(self.obs_shape) != 3 or min(self.obs_shape) < 1:
            raise PyroVAEError(f"a feature net reads images (C, H, W); got the shape {self.obs_shape}")
        if self.classes < 2:
            raise PyroVAEError(f"a feature net needs at least 2 classes, got {self.classes}")
        layers: list[nn.Module] = []
        channels, side = self.obs_shape[0], min(self.obs_shape[1:])
        for i, width in enumerate(self.widths):
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
            if i < len(self.pool_from) and side >= self.pool_from[i]:
                layers.append(nn.MaxPool2d(2))
                side //= 2
            channels = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(channels, self.classes)

    @property
    def feature_dim(self) -> int:
        return self.widths[-1]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 64): the channel means of the last convolution's map."""
        return self.body(x).mean(dim=(-2, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


FEATURE_NETS = Registry("feature net")


def _loader(name: str):
    def build(device="cpu"):
        return load(name, device)

    return build


FEATURE_NETS.add(
    "mnist-cnn-v1", _loader("mnist-cnn-v1"),
    "CNN on MNIST's 50,000 training images, each batch half grey and half randomly binarized",
    datasets=("mnist", "binarized-mnist"), file="mnist-cnn-v1.pt",
    sha256="368b8904b1802b0f881dee3b2a205cb9b2e9e9b7ff67aef23800e9af9e522f23")
FEATURE_NETS.add(
    "digits-cnn-v1", _loader("digits-cnn-v1"),
    "CNN on scikit-learn's 8x8 digits (grey levels / 16), each batch half grey and half randomly binarized",
    datasets=("digits",), file="digits-cnn-v1.pt",
    sha256="476710139ca6c4286a6120f7b86644adac6ba0115ab4c0ba86e9a496dd0d9f9f")


def for_dataset(dataset: str) -> str | None:
    """The shipped net that serves ``dataset`` (a registered dataset name), or None."""
    for name, entry in FEATURE_NETS.items():
        if dataset in entry.datasets:
            return name
    return None


def sha256_of(path: str | Path) -> str:
    try:
        return file_sha256(path)
    except OSError as err:
        raise PyroVAEError(f"cannot read feature net file {path}: {err.strerror or err}") from None


def shipped_path(name: str) -> Path:
    return HERE / FEATURE_NETS[name].file


def load(name: str, device="cpu") -> tuple[FeatureNet, dict]:
    """The shipped net ``name`` in eval mode on ``device``, and its info (name, version, sha256,
    feature_dim, obs_shape, classes, test_accuracy, seed, torch, trained_on, path).

    The file's sha256 must be the registry's: the net *is* the metric, so a changed file would
    silently change every score measured with it."""
    entry = FEATURE_NETS[name]
    path = shipped_path(name)
    if not path.is_file():
        raise PyroVAEError(f"feature net {name}: its file {path} is missing; reinstall pyro_vae or remake it with "
                           f"python -m pyro_vae.features.train {name}")
    found = sha256_of(path)
    if found != entry.sha256:
        raise PyroVAEError(f"feature net {name}: {path} has sha256 {found[:16]}..., the registry expects "
                           f"{entry.sha256[:16]}...; the file is corrupted or was retrained (reinstall pyro_vae)")
    net, info = _read(path, device, found)
    if info["name"] != name:
        raise PyroVAEError(f"feature net {name}: {path} holds the net {info['name']!r}")
    return net, info


def load_file(path: str | Path, device="cpu") -> tuple[FeatureNet, dict]:
    """A net written by ``python -m pyro_vae.features.train --out PATH``, with the same info as
    :func:`load` (its version is the name stored in the file). No registry hash to check, but a
    file of another format, a truncated file or weights of another shape is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise PyroVAEError(f"feature net file not found: {path}")
    return _read(path, device, sha256_of(path))


def _read(path: Path, device, sha256: str) -> tuple[FeatureNet, dict]:
    try:
        saved = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # noqa: BLE001 - a foreign or truncated file can fail anywhere in the unpickler
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise PyroVAEError(f"cannot read feature net file {path}: {first[:200]}") from None
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        got = saved.get("format") if isinstance(saved, dict) else type(saved).__name__
        raise PyroVAEError(f"{path} is not a pyro_vae feature net (format {got!r}, expected {FORMAT!r}); write one "
                           "with python -m pyro_vae.features.train")
    missing = [key for key in _REQUIRED if key not in saved]
    if missing:
        raise PyroVAEError(f"feature net file {path} lacks {', '.join(missing)}")
    shape, classes, state = saved["obs_shape"], saved["classes"], saved["state"]
    if not (isinstance(shape, (list, tuple)) and len(shape) == 3 and all(isinstance(s, int) and s > 0 for s in shape)):
        raise PyroVAEError(f"feature net file {path}: obs_shape must be [C, H, W] positive integers, got {shape!r}")
    if not isinstance(classes, int) or classes < 2:
        raise PyroVAEError(f"feature net file {path}: classes must be an integer >= 2, got {classes!r}")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PyroVAEError(f"feature net file {path}: state must be a state dict of tensors")
    net = FeatureNet(shape, classes)
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise PyroVAEError(f"feature net file {path}: its weights do not fit a FeatureNet for {tuple(shape)} "
                           f"images with {classes} classes ({first[:160]})") from None
    if not all(torch.isfinite(v).all() for v in state.values() if v.dtype.is_floating_point):
        raise PyroVAEError(f"feature net file {path} holds NaN or infinite weights")
    net.to(device).eval()
    info = {"name": str(saved["name"]), "version": str(saved["name"]), "sha256": sha256,
            "feature_dim": net.feature_dim, "obs_shape": tuple(shape), "classes": classes,
            "test_accuracy": float(saved["test_accuracy"]), "seed": saved["seed"], "torch": saved["torch"],
            "trained_on": saved["trained_on"]}
    if "test_accuracy_binarized" in saved:
        info["test_accuracy_binarized"] = float(saved["test_accuracy_binarized"])
    return net, info


def save(path: str | Path, net: FeatureNet, name: str, test_accuracy: float, seed: int, trained_on: str,
         **extra) -> str:
    """Write ``net`` in the file format above, atomically; returns the file's sha256."""
    record = {"format": FORMAT, "name": name, "obs_shape": list(net.obs_shape), "classes": net.classes,
              "state": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
              "test_accuracy": float(test_accuracy), "seed": int(seed), "torch": str(torch.__version__),
              "trained_on": str(trained_on), **extra}
    # through a buffer: torch.save names the archive's records after a file's name, and the
    # temporary name is random, so saving to it would give every retraining a new sha256
    buffer = io.BytesIO()
    torch.save(record, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return sha256_of(path)


def _check_images(net: FeatureNet, x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise PyroVAEError(f"features are extracted from a tensor of images, got {type(x).__name__}")
    if x.ndim == 2 and x.shape[1] == net.obs_shape[0] * net.obs_shape[1] * net.obs_shape[2]:
        x = x.reshape(-1, *net.obs_shape)  # flat observations of the right size: the suite's (N, D) samples
    if tuple(x.shape[1:]) != net.obs_shape:
        raise PyroVAEError(f"the feature net reads images of shape {net.obs_shape}; got a batch of shape "
                           f"{tuple(x.shape)}")
    return x


def extract(net: FeatureNet, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Features (N, feature_dim) of images ``x`` (N, C, H, W), as float64 on ``x``'s device.

    Batches of ``batch_size`` bound the memory of the convolutions' maps; the net is moved to
    ``x``'s device and put in eval mode."""
    x = _check_images(net, x)
    if batch_size < 1:
        raise PyroVAEError(f"batch_size must be positive, got {batch_size}")
    net.to(x.device).eval()
    dtype = next(net.parameters()).dtype
    out = torch.empty(x.shape[0], net.feature_dim, dtype=torch.float64, device=x.device)
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            out[start:start + batch_size] = net.features(x[start:start + batch_size].to(dtype)).double()
    return out


def accuracy(net: FeatureNet, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    """The fraction of images whose most likely class is the label."""
    x = _check_images(net, x)
    net.to(x.device).eval()
    dtype = next(net.parameters()).dtype
    right = 0
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            logits = net(x[start:start + batch_size].to(dtype))
            right += int((logits.argmax(1) == y[start:start + batch_size].to(logits.device)).sum())
    return right / max(x.shape[0], 1)
