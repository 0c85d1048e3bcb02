"""``pyro-vae sample`` and ``pyro-vae encode``: commands that draw from a trained run; and the
argument checks and result writing every command module shares."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .config import SEED_MAX, check_seed
from .errors import PyroVAEError

MAX_GRID = 10_000  # images in one sample grid (a 100 x 100 grid of MNIST is 2800 x 2800 pixels)


def positive(name: str, value: int) -> None:
    if value <= 0:
        raise PyroVAEError(f"{name} must be a positive integer, got {value}")


def seed_arg(text: str) -> int:
    """An argparse type: an integer seed numpy and torch accept."""
    try:
        return check_seed(int(text))
    except (ValueError, PyroVAEError):
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to {SEED_MAX}, got {text!r}") from None


def print_then_write(path: Path, result: dict, text: str) -> int:
    """Print ``text`` (the result), then write ``result`` as JSON at ``path``: a run directory that
    cannot be written loses nothing. Returns the exit code: 2, with one line, when the write fails."""
    from .io import write_text_atomic

    print(text)
    try:
        write_text_atomic(path, json.dumps(result, indent=2) + "\n")
    except OSError as err:
        print(f"pyro-vae: error: could not write {path}: {err.strerror or err}", file=sys.stderr)
        return 2
    return 0


def cmd_sample(args) -> int:
    import pyro
    import torch

    from .plots import image_grid, is_image
    from .run import load_run, resolve_device

    positive("-n", args.n)
    if args.n > MAX_GRID:
        raise PyroVAEError(f"-n {args.n} asks for more images than a grid can show; at most {MAX_GRID:,}")
    if not args.out.lower().endswith(".png"):
        raise PyroVAEError(f"--out must name a .png file, got {args.out}")
    if Path(args.out).is_dir():
        raise PyroVAEError(f"--out {args.out} is a directory; name a .png file to write")
    device = resolve_device(args.device)
    checkpoint = load_run(args.run_dir, device)
    from .two_stage import decode, first_stage, sample_codes

    first = first_stage(checkpoint.config, device)
    if first is not None:  # a second stage: its codes decoded by the first
        if args.label is not None or args.style_of is not None:
            raise PyroVAEError("--label and --style-of need a model with labels; this run is a second stage")
        pyro.set_rng_seed(args.seed)
        stage, sites, sizes = first
        codes = sample_codes(checkpoint.pair.model, args.n, sum(sizes), device)
        images = decode(stage, sites, sizes, codes, draw=False)
        image_grid(images, stage.obs_shape, Path(args.out))
        print(f"wrote {args.out} (codes decoded by the first stage)")
        return 0
    if not is_image(checkpoint.obs_shape):
        raise PyroVAEError(f"the run's data are vectors of shape {checkpoint.obs_shape}, not images")
    model = checkpoint.pair.model
    if (args.label is not None or args.style_of is not None) and not model.classes:
        raise PyroVAEError("--label and --style-of need a run of a model with labels (--model cvae or m2); this run's "
                           f"model ({checkpoint.config.model}) has none")
    if args.label is not None and not 0 <= args.label < model.classes:
        raise PyroVAEError(f"--label must be a class in [0, {model.classes}), got {args.label}")
    if args.label is not None and args.style_of is not None:
        raise PyroVAEError("--style-of decodes every class; it takes no --label")
    pyro.set_rng_seed(args.seed)
    if args.style_of is not None:
        _style_analogies(checkpoint, args)
    elif model.classes:  # one class per column, or every image of the chosen class
        labels = None if args.label is None else torch.full((args.n,), args.label)
        image_grid(model.sample(args.n, labels), checkpoint.obs_shape, Path(args.out), nrow=model.classes)
    else:
        image_grid(model.sample(args.n), checkpoint.obs_shape, Path(args.out))
    print(f"wrote {args.out}")
    return 0


def _style_analogies(checkpoint, args) -> None:
    from .plots import image_grid
    from .run import run_data
    from .semisupervised import style_analogies

    data = run_data(checkpoint, args.data_dir)
    if not data.labelled:
        raise PyroVAEError(f"--style-of needs the run's labelled test images; {data.name} has no labels")
    n = data.x["test"].shape[0]
    bad = [i for i in args.style_of if not 0 <= i < n]
    if bad or not args.style_of:
        raise PyroVAEError(f"--style-of takes indices of test images in [0, {n}), got {args.style_of}")
    device = next(checkpoint.pair.parameters()).device
    # the test split as evaluated (one fixed binarization), with its own labels
    x, y = data.observations("test", device)[args.style_of], data.labels("test", device)[args.style_of]
    grid = style_analogies(checkpoint.pair.model, checkpoint.pair.guide, x, y)
    image_grid(grid.reshape((-1,) + grid.shape[2:]), checkpoint.obs_shape, Path(args.out), nrow=grid.shape[1])


def cmd_encode(args) -> int:
    import pyro

    from . import encode
    from .data import SPLITS
    from .run import load_run_and_data, resolve_device

    positive("--batch-size", args.batch_size)
    if not args.out.endswith(".npz"):
        raise PyroVAEError(f"--out must name a .npz file, got {args.out}")
    device = resolve_device(args.device)
    checkpoint, data = load_run_and_data(args.run_dir, device, args.data_dir)
    pyro.set_rng_seed(args.seed)
    splits = SPLITS if args.split == "all" else (args.split,)
    arrays = encode.encode(checkpoint.pair, data, checkpoint.config, splits, args.what, device, args.batch_size)
    from .two_stage import source_arrays  # a model trained on the codes can decode through this run

    arrays.update(source_arrays(args.run_dir))
    encode.write(args.out, arrays)
    what = {"mean": "posterior means", "sample": "posterior draws", "posterior": "posterior means and sds"}[args.what]
    print(f"wrote {args.out}: {arrays['x'].shape[0]} rows of {arrays['x'].shape[1]} {what} ({', '.join(splits)})")
    return 0
