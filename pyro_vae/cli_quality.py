"""``pyro-vae quality`` and ``pyro-vae refit-prior``: the prior hole, measured and closed."""

from __future__ import annotations

import functools
import json
from pathlib import Path

from .cli_draw import positive, print_then_write, seed_arg
from .config import DEVICE_CHOICES
from .errors import PyroVAEError


def add_parsers(sub) -> None:
    quality = sub.add_parser("quality", help="ELBO surgery, the prior hole, FID / precision / recall of samples")
    quality.add_argument("run_dir")
    quality.add_argument("--samples", type=int, default=10000, help="model samples (and test images) compared")
    quality.add_argument("--codes", type=int, default=2000,
                         help="training codes and prior draws of the ELBO surgery and the prior hole")
    quality.add_argument("--mixture-images", type=int, default=None,
                         help="training images in the aggregate posterior's mixture (default all: exact)")
    quality.add_argument("--features", default=None,
                         help="feature network: a file written by `python -m pyro_vae.features.train`, or a run "
                              "directory (its posterior means); default: the dataset's shipped network")
    quality.add_argument("--batch-size", type=int, default=500)
    quality.add_argument("--data-dir", default=None)
    quality.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    quality.add_argument("--seed", type=seed_arg, default=0)
    quality.add_argument("--json", action="store_true", help="print one JSON object")

    from .refit import REFITS

    refit = sub.add_parser("refit-prior", help="fit a new prior to a trained run's codes, written as a new run")
    refit.add_argument("run_dir")
    refit.add_argument("--prior", required=True, help=REFITS.choices())
    refit.add_argument("--out", required=True, help="the new run directory")
    refit.add_argument("--components", type=int, default=10, help="gmm: mixture components")
    refit.add_argument("--data-dir", default=None)
    refit.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    refit.add_argument("--seed", type=seed_arg, default=0)


def _run_features(run_dir: str, shape: tuple, device):
    from .contract import site_means
    from .run import load_run

    checkpoint = load_run(run_dir, device)
    if tuple(checkpoint.obs_shape) != tuple(shape):
        raise PyroVAEError(f"--features run {run_dir} takes images of shape {checkpoint.obs_shape}, not {shape}")
    guide = checkpoint.pair.eval().guide

    def extract(images):
        import torch

        parts = [torch.cat(list(site_means(guide, images[i:i + 500]).values()), -1) for i in range(0, len(images), 500)]
        return torch.cat(parts).double()

    from .two_stage import checkpoint_sha256

    return extract, {"name": f"run {Path(run_dir).resolve()}", "sha256": checkpoint_sha256(run_dir)}


def features_for(spec, dataset: str, shape: tuple, device):
    """(images -> features, what to record of the network) for ``--features`` or the dataset's
    shipped network; (None, None) where there is none."""
    from . import features

    if spec is not None and Path(spec).is_dir():
        return _run_features(spec, shape, device)
    if spec is not None:
        net, info = features.load_file(spec, device)
    else:
        name = features.for_dataset(dataset)
        if name is None:
            return None, None
        net, info = features.load(name, device)
    if tuple(info["obs_shape"]) != tuple(shape):
        raise PyroVAEError(f"feature network {info['name']} reads images of shape {tuple(info['obs_shape'])}, "
                           f"these are {tuple(shape)}")
    return (lambda images: features.extract(net, images)), info


def assess_run(run_dir, samples=10000, codes=2000, mixture=None, features=None, device="auto", seed=0,
               data_dir=None, batch_size=500) -> dict:
    """``quality.assess`` of a run directory: its training images define q(z), its test images are
    compared with its samples (a second stage's decoded by its first)."""
    from . import quality, two_stage
    from .models import MODELS
    from .run import load_run_and_data, resolve_device, run_data

    device = resolve_device(device)
    checkpoint, data = load_run_and_data(run_dir, device, data_dir)
    spec = MODELS[checkpoint.config.model]
    labels = spec.conditional or spec.semi_supervised
    x_train = data.observations("train", device)
    y_train = data.labels("train", device) if labels else None
    images, y_test, decode, dataset = data, data.labels("test", device) if labels else None, None, data.name
    first = two_stage.first_stage(checkpoint.config, device)
    if first is not None:  # a second stage: its codes are decoded by the first, compared with its images
        stage, sites, sizes = first
        images, dataset = run_data(stage, data_dir), stage.config.dataset
        decode = functools.partial(two_stage.decode, stage, sites, sizes)

    x_test = images.observations("test", device)
    # rows shaping the model's own samples: its test observations (a second stage's are its codes)
    x_like = x_test if first is None else data.observations("test", device)
    shape = tuple(x_test.shape[1:])
    extract, info = features_for(features, dataset, shape, device)
    result = quality.assess(checkpoint.pair.model, checkpoint.pair.guide, x_train, x_test, extract,
                            y_train=y_train, y_test=y_test, samples=samples, codes=codes, mixture=mixture, seed=seed,
                            conditional=spec.conditional, decode=decode, x_like=x_like,
                            batch_size=batch_size)
    meta = {"run": str(run_dir), "dataset": checkpoint.config.dataset, "model": checkpoint.config.model,
            "guide": checkpoint.config.guide, "prior": checkpoint.config.prior, "epoch": checkpoint.train_state.epoch,
            "seed": seed, "features": info, "two_stage": first is not None}
    return {**meta, **result}


def format_quality(r: dict) -> str:
    rows = [("run", r["run"])]
    if "kl" in r:
        s = r["surgery"]
        mix = f"all {s['train_images']}" if s["exact_mixture"] else f"{s['mixture_images']} of {s['train_images']}"
        rows += [("ELBO surgery", f"KL {r['kl']:.3f} ± {r['kl_se']:.3f} = I(x;z) {r['mutual_information']:.3f} ± "
                                  f"{r['mutual_information_se']:.3f} + KL(q(z)||p(z)) {r['marginal_kl']:.3f} ± "
                                  f"{r['marginal_kl_se']:.3f} nats"),
                 ("", f"({s['codes']} codes; q(z) over {mix} training images)")]
        hole = f"{100 * r['prior_hole']:.1f} ± {100 * r['prior_hole_se']:.1f} % of prior draws"
        if "prior_hole_standard" in r:
            hole += f" (N(0, I): {100 * r['prior_hole_standard']:.1f} ± {100 * r['prior_hole_standard_se']:.1f} %)"
        rows.append(("prior hole", hole))
    if "fid" in r:
        rows += [("FID", f"{r['fid']:.3f} ({r['features']['name']} features; {r['sample_images']} samples, "
                         f"{r['real_images']} test images; not an Inception FID)"),
                 ("precision", f"{r['precision']:.4f} ± {r['precision_se']:.4f}"),
                 ("recall", f"{r['recall']:.4f} ± {r['recall_se']:.4f}")]
    for key, why in r.get("unavailable", {}).items():
        rows.append((key, f"not measured: {why}"))
    return "\n".join(f"{k:<18} {v}" for k, v in rows)


def cmd_quality(args) -> int:
    for name in ("--samples", "--codes", "--mixture-images", "--batch-size"):
        value = getattr(args, name[2:].replace("-", "_"))
        if value is not None:  # --mixture-images: none given is all
            positive(name, value)
    result = assess_run(args.run_dir, args.samples, args.codes, args.mixture_images, args.features, args.device,
                        args.seed, args.data_dir, args.batch_size)
    return print_then_write(Path(args.run_dir) / "quality.json", result,
                            json.dumps(result) if args.json else format_quality(result))


def cmd_refit_prior(args) -> int:
    from .refit import refit
    from .run import resolve_device

    record = refit(args.run_dir, args.prior, args.out, components=args.components, seed=args.seed,
                   device=resolve_device(args.device), data_dir=args.data_dir)
    fit = record["log_density_per_code"]
    print(f"refitted {record['density']} to {record['codes']['train']} training codes of {record['site']}: "
          f"log density {fit['train']:.3f} per code (validation {fit['valid']:.3f})")
    print(f"wrote {args.out}")
    return 0
