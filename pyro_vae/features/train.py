"""The script that made the shipped feature nets, and trains a net on a user's labelled images.

    python -m pyro_vae.features.train mnist-cnn-v1 --data-dir DIR   # remake a shipped file
    python -m pyro_vae.features.train digits-cnn-v1
    python -m pyro_vae.features.train --dataset FILE.npz --out NET.pt [--epochs N] [--mix-binarized]

A shipped net's recipe (dataset, epochs, seed, ...) is fixed in :data:`RECIPES`; its file is
written beside :mod:`pyro_vae.features`, and its printed sha256 must then be recorded in the
registry there (a retrained file is a new version of the metric, so it gets a new name). Training
is seeded, uses deterministic algorithms and, for the shipped recipes, one CPU thread: the same
torch build on the same kind of CPU then writes the same bytes.

Images are the suite's observations in [0, 1] (``pyro_vae.data``, grey levels unbinarized). With
``mix_binarized`` each batch's second half is replaced by a fresh Bernoulli draw of its pixels, so
one net reads both the grey images of ``mnist`` and the 0/1 images of ``binarized-mnist`` and of
models with a Bernoulli likelihood.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import data as datasets
from ..errors import PyroVAEError
from . import FEATURE_NETS, FeatureNet, accuracy, save, shipped_path

RECIPES = {
    "mnist-cnn-v1": dict(dataset="mnist", epochs=8, batch_size=128, lr=3e-3, seed=20240601, mix_binarized=True,
                         threads=1),
    "digits-cnn-v1": dict(dataset="digits", epochs=60, batch_size=64, lr=3e-3, seed=20240601, mix_binarized=True,
                          threads=1),
}


def _labelled(name: str, data_dir, binarize: str):
    """The dataset's observations in [0, 1] per split and its labels 0..K-1, K."""
    likelihood = "bernoulli" if binarize != "none" else "gaussian"
    data = datasets.load(name, data_dir, likelihood=likelihood, binarize=binarize)
    if len(data.obs_shape) != 3:
        raise PyroVAEError(f"a feature net reads images (N, C, H, W); {name} holds flat vectors of shape "
                           f"{data.obs_shape}")
    if not data.labelled:
        raise PyroVAEError(f"{name} has no labels: a feature net is trained to classify, give an .npz with labels y")
    classes = data.classes()
    for split in ("valid", "test"):
        x = data.observations(split)
        low, high = float(x.min()), float(x.max())
        if low < 0 or high > 1:
            raise PyroVAEError(f"the {split} split of {name} has values in [{low:g}, {high:g}]; a feature net reads "
                               "images in [0, 1] (divide 8-bit pixels by 255)")
    return data, classes


def train(dataset: str, out: str | Path, name: str, data_dir=None, epochs: int = 10, batch_size: int = 128,
          lr: float = 3e-3, seed: int = 0, mix_binarized: bool = False, binarize: str = "none", device="cpu",
          threads: int | None = None, log=print) -> dict:
    """Train a :class:`FeatureNet` on ``dataset``'s training split and write it to ``out``.

    Adam with a cosine decay of the step size over all steps; the test accuracy (and, with
    ``mix_binarized``, that on one fixed random binarization of the test images) is stored in
    the file. ``threads`` fixes torch's CPU threads for the run: the order of a convolution's sums
    follows the thread count, so only a fixed count gives the same file (and sha256) on another
    machine. Returns what was written: name, path, sha256, accuracies, seconds."""
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise PyroVAEError(f"epochs and batch size must be positive and lr > 0; got {epochs}, {batch_size}, {lr}")
    deterministic, before = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.use_deterministic_algorithms(True, warn_only=True)
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _train(dataset, Path(out), name, data_dir, epochs, batch_size, lr, seed, mix_binarized, binarize,
                      torch.device(device), log)
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(before)


def _train(dataset, out, name, data_dir, epochs, batch_size, lr, seed, mix_binarized, binarize, device, log):
    started = time.perf_counter()
    data, classes = _labelled(dataset, data_dir, binarize)
    if mix_binarized and data.obs_shape[0] != 1:
        raise PyroVAEError(f"--mix-binarized draws one 0/1 value per grey level, and {dataset} has "
                           f"{data.obs_shape[0]} channels")
    torch.manual_seed(seed)
    net = FeatureNet(data.obs_shape, classes).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    n = data.x["train"].shape[0]
    steps = epochs * math.ceil(n / batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)))
    for epoch in range(epochs):
        net.train()
        total, count = 0.0, 0
        for x, y in data.batches("train", batch_size, shuffle=True, device=device):
            if mix_binarized:
                half = x.shape[0] // 2
                x = torch.cat([x[:half], torch.bernoulli(x[half:])])
            loss = F.cross_entropy(net(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total, count = total + float(loss.detach()) * x.shape[0], count + x.shape[0]
        valid = accuracy(net, data.observations("valid", device), data.labels("valid", device))
        log(f"epoch {epoch + 1}/{epochs}: loss {total / count:.4f}, valid accuracy {valid:.4f}")
    x_test, y_test = data.observations("test", device), data.labels("test", device)
    result = {"test_accuracy": accuracy(net, x_test, y_test)}
    if mix_binarized:
        # a fixed draw, so the stored number is reproducible from the file alone
        draw = torch.Generator().manual_seed(seed)
        binary = torch.bernoulli(x_test.cpu(), generator=draw).to(device)
        result["test_accuracy_binarized"] = accuracy(net, binary, y_test)
    trained_on = Path(dataset).name if dataset not in datasets.DATASETS else dataset
    sha = save(out, net, name, result["test_accuracy"], seed, trained_on,
               **{k: v for k, v in result.items() if k != "test_accuracy"})
    result.update(name=name, path=str(out), sha256=sha, seconds=time.perf_counter() - started,
                  parameters=sum(p.numel() for p in net.parameters()))
    return result


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pyro_vae.features.train", description=__doc__.split("\n\n")[0])
    p.add_argument("name", nargs="?", help=f"a shipped net to remake: {', '.join(RECIPES)}")
    p.add_argument("--data-dir", default=None, help="folder holding the datasets (default $PYRO_VAE_DATA or data)")
    p.add_argument("--dataset", help="train on this registered dataset or labelled .npz (x, integer y) instead")
    p.add_argument("--out", help="where to write the net trained on --dataset")
    p.add_argument("--net-name", help="the name stored in the file (default: --out's stem)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mix-binarized", action="store_true",
                   help="binarize half of each batch at random, so the net reads grey and 0/1 images")
    p.add_argument("--binarize", default="none", choices=("none", "static", "dynamic"),
                   help="binarize the dataset itself, as pyro_vae.data does")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (fix it to make the file reproducible)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.name is not None:
            if args.dataset or args.out:
                raise PyroVAEError("give a shipped net's name, or --dataset with --out, not both")
            FEATURE_NETS[args.name]
            if args.name not in RECIPES:
                raise PyroVAEError(f"no recipe for {args.name}; choose from {', '.join(RECIPES)}")
            recipe = dict(RECIPES[args.name])
            result = train(recipe.pop("dataset"), shipped_path(args.name), args.name, args.data_dir,
                           device=args.device, **recipe)
        else:
            if not (args.dataset and args.out):
                raise PyroVAEError("give a shipped net's name, or --dataset FILE.npz with --out NET.pt")
            result = train(args.dataset, args.out, args.net_name or Path(args.out).stem, args.data_dir,
                           args.epochs, args.batch_size, args.lr, args.seed, args.mix_binarized, args.binarize,
                           args.device, args.threads)
    except PyroVAEError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    extra = f", binarized test accuracy {result['test_accuracy_binarized']:.4f}" \
        if "test_accuracy_binarized" in result else ""
    print(f"{result['name']}: test accuracy {result['test_accuracy']:.4f}{extra}; {result['parameters']} parameters, "
          f"{result['seconds']:.0f} s")
    print(f"wrote {result['path']} sha256 {result['sha256']}")
    if args.name is not None and FEATURE_NETS[args.name].sha256 != result["sha256"]:
        print(f"the registry expects sha256 {FEATURE_NETS[args.name].sha256} for {args.name}: record the new one in "
              "pyro_vae/features/__init__.py (or ship it under a new name)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
