"""``pyro-vae``: argument parsing only; the work is done by library functions.

Errors a user can cause print one line on stderr and exit with code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys

from .cli_draw import cmd_encode, cmd_sample, positive, seed_arg
from .cli_evaluate import cmd_evaluate
from .cli_quality import add_parsers as add_quality_parsers
from .cli_quality import cmd_quality, cmd_refit_prior
from .config import BINARIZE_CHOICES, DEVICE_CHOICES, RunConfig
from .data import DATASETS
from .errors import PyroVAEError, interrupted
from .guides import GUIDES
from .hierarchical import INFERENCE
from .likelihoods import LIKELIHOODS
from .models import MODELS
from .nets import ACTIVATIONS, ARCHITECTURES
from .objectives import OBJECTIVES
from .priors import PRIORS


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit 2, like every other user error
        raise PyroVAEError(message if self.prog == "pyro-vae" else f"{self.prog}: {message}")


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _option_flag(name: str, option, entries: list[str]) -> tuple:
    """(flag, field, argparse keywords) of a declared registry option, typed by its default."""
    default = option.default
    if isinstance(default, bool):
        kwargs = dict(action="store_const", const=True)
    elif isinstance(default, (list, tuple)):
        kwargs = dict(type=_int_list)
    else:
        kwargs = dict(type=type(default))
    shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else default
    help_text = f"{option.help} (default {shown}; {', '.join(entries)})"
    return "--" + name.replace("_", "-"), name, dict(help=help_text, **kwargs)


# (flag, config field, argparse keywords); defaults live in RunConfig, so a flag left out keeps the
# value of --config FILE or the dataclass default.
TRAIN_FLAGS = [
    ("--dataset", "dataset", dict(help=f"{DATASETS.choices()}; or a .npz/.npy file with array x (and labels y)")),
    ("--data-dir", "data_dir", dict(help="folder holding MNIST/raw, binarized_mnist/, FreyFaces/ (default $PYRO_VAE_DATA or ./data)")),
    ("--download", "download", dict(action="store_const", const=True, help="let torchvision download MNIST if absent")),
    ("--binarize", "binarize", dict(choices=BINARIZE_CHOICES)),
    ("--likelihood", "likelihood", dict(help=f"{LIKELIHOODS.choices()} (default: the dataset's)")),
    ("--model", "model", dict(help=MODELS.choices())),
    ("--arch", "arch", dict(help=ARCHITECTURES.choices())),
    ("--hidden", "hidden", dict(type=_int_list, help="hidden sizes, e.g. 500,500")),
    ("--activation", "activation", dict(help=", ".join(ACTIVATIONS))),
    ("--latent-dim", "latent_dim", dict(type=_int_list, help="size of z (8); a comma-separated list, e.g. 100,50, "
                                                             "gives one stochastic layer per entry, nearest x first")),
    ("--layer-hidden", "layer_hidden", dict(type=_int_list, help="hidden sizes of the networks between latent layers "
                                                                 "(default 100,100)")),
    ("--inference", "inference", dict(help=f"{INFERENCE.choices()} (several latent layers; default bottom-up)")),
    ("--batch-norm", "batch_norm", dict(action="store_const", const=True,
                                        help="batch normalization in the deterministic layers (mlp)")),
    ("--guide", "guide", dict(help=f"{', '.join(GUIDES)} (`pyro-vae guides` describes them)")),
    ("--prior", "prior", dict(help=PRIORS.choices())),
    ("--objective", "objective", dict(help=f"{OBJECTIVES.choices()}. Default: meanfield where every latent site "
                                          "has a closed-form KL, elbo otherwise")),
    ("--particles", "particles", dict(type=int, help="samples per datapoint (K of iwae)")),
    ("--labelled", "labelled", dict(type=int, help="--model m2: labelled training images, class-balanced, drawn "
                                                  "from --seed (default: all)")),
    ("--alpha", "alpha", dict(type=float, help="--model m2: weight of the classification term alpha * mean "
                                               "log q(y|x) over labelled images (default 0.1 * N_train)")),
    ("--labelled-share", "labelled_share", dict(type=float, help="--model m2: share of each batch drawn from the "
                                                                 "labelled images (default 0.25)")),
    ("--beta", "beta", dict(type=float, help="KL weight")),
    ("--warmup-epochs", "warmup_epochs", dict(type=int, help="epochs of linear KL annealing up to beta")),
    ("--epochs", "epochs", dict(type=int)),
    ("--batch-size", "batch_size", dict(type=int)),
    ("--lr", "lr", dict(type=float)),
    ("--patience", "patience", dict(type=int, help="early stopping: epochs without a better validation ELBO")),
    ("--min-scale", "min_scale", dict(type=float, help="floor of the Gaussian likelihood's scale")),
    ("--seed", "seed", dict(type=seed_arg)),
    ("--device", "device", dict(choices=DEVICE_CHOICES)),
    ("--out", "out", dict(help="run directory to write")),
    ("--compile", "compile", dict(action="store_const", const=True,
                                  help="compile the training step with torch.compile (same bound and draws)")),
]
RESUMABLE = {"out", "epochs", "device", "distributed"}
# Flags stored in RunConfig.guide_options, one per option the guide families declare
# (`pyro-vae guides` says which family takes which).
GUIDE_FLAGS = [_option_flag(name, option, entries) for name, (option, entries) in GUIDES.all_options().items()]
# Flags stored in RunConfig.arch_options and RunConfig.likelihood_options, built the same way from
# the options the architectures and likelihoods declare (the help names the entries taking each).
ARCH_FLAGS = [_option_flag(name, option, entries) for name, (option, entries) in ARCHITECTURES.all_options().items()]
LIKELIHOOD_FLAGS = [_option_flag(name, option, entries)
                    for name, (option, entries) in LIKELIHOODS.all_options().items()]
# (flags, RunConfig field of the options they fill)
PRIOR_FLAGS = [_option_flag(name, option, entries) for name, (option, entries) in PRIORS.all_options().items()]
OPTION_FLAGS = ((GUIDE_FLAGS, "guide_options"), (ARCH_FLAGS, "arch_options"), (LIKELIHOOD_FLAGS, "likelihood_options"),
                (PRIOR_FLAGS, "prior_options"))
ALL_OPTION_FLAGS = GUIDE_FLAGS + ARCH_FLAGS + LIKELIHOOD_FLAGS + PRIOR_FLAGS


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pyro-vae", description="Variational autoencoders as Pyro model/guide pairs.",
                     allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True,
                                parser_class=lambda **kw: _Parser(allow_abbrev=False, **kw))

    train = sub.add_parser("train", help="train a VAE into a run directory")
    train.add_argument("--config", help="JSON file of RunConfig fields; flags override it")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last epoch")
    train.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    train.add_argument("--distributed", action="store_true", default=None,
                       help="data-parallel over the processes of a torchrun job (see README, Scaling out)")
    for flag, field, kwargs in TRAIN_FLAGS + ALL_OPTION_FLAGS:
        train.add_argument(flag, dest=field, default=None, **kwargs)

    evaluate = sub.add_parser("evaluate", help="test ELBO, importance-sampled NLL, active units")
    evaluate.add_argument("run_dir")
    evaluate.add_argument("--iw-samples", type=int, default=5000)
    evaluate.add_argument("--split", choices=("train", "valid", "test"), default="test")
    evaluate.add_argument("--batch-size", type=int, default=100)
    evaluate.add_argument("--data-dir", default=None)
    evaluate.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    evaluate.add_argument("--seed", type=seed_arg, default=0)
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")

    sample = sub.add_parser("sample", help="draw images from the model's prior")
    sample.add_argument("run_dir")
    sample.add_argument("-n", type=int, default=64)
    sample.add_argument("--out", required=True, help="PNG file to write")
    sample.add_argument("--label", type=int, help="class of every image (a model with labels: cvae, m2)")
    sample.add_argument("--style-of", type=_int_list, metavar="INDICES",
                        help="analogies: the style z of these test images (comma-separated indices) decoded with "
                             "every class, one row per image, the image first")
    sample.add_argument("--data-dir", default=None)
    sample.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    sample.add_argument("--seed", type=seed_arg, default=0)

    compare = sub.add_parser("compare", help="train and evaluate one model per guide, side by side")
    compare.add_argument("--guides", required=True, type=lambda t: [g for g in t.split(",") if g],
                         help="comma-separated guide names, e.g. diag,full,planar,iaf,coupling")
    compare.add_argument("--runs", type=lambda t: [r for r in t.split(",") if r],
                         help="existing run directories, one per guide, instead of training")
    compare.add_argument("--iw-samples", type=int, default=1000)
    compare.add_argument("--images", type=int, default=4, help="test images in posteriors.png")
    compare.add_argument("--config", help="JSON file of RunConfig fields; flags override it")
    compare.add_argument("--quiet", action="store_true")
    for flag, field, kwargs in TRAIN_FLAGS + ALL_OPTION_FLAGS:
        if field == "out":
            compare.add_argument("--out", default="runs/compare", help="output directory")
        elif field != "guide":
            compare.add_argument(flag, dest=field, default=None, **kwargs)

    diag = sub.add_parser("diagnose", help="each guide's q(z|x) against a reference posterior, with ArviZ")
    diag.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="the first run's model is held fixed")
    diag.add_argument("--images", type=int, default=8, help="test images to diagnose")
    diag.add_argument("--reference", choices=("nuts", "grid"), default="nuts", help="grid: exact, 2-D latents only")
    diag.add_argument("--chains", type=int, default=2)
    diag.add_argument("--warmup", type=int, default=300)
    diag.add_argument("--draws", type=int, default=300)
    diag.add_argument("--iw-samples", type=int, default=5000, help="samples of the log p(x) estimate")
    diag.add_argument("--is-samples", type=int, default=2000, help="draws of q behind k-hat and ESS")
    diag.add_argument("--data-dir", default=None)
    diag.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    diag.add_argument("--seed", type=seed_arg, default=0)
    diag.add_argument("--out", default="runs/diagnose")

    encode = sub.add_parser("encode", help="posterior means (or draws) of a dataset as an .npz dataset")
    encode.add_argument("run_dir")
    encode.add_argument("--split", choices=("train", "valid", "test", "all"), default="all")
    encode.add_argument("--out", required=True, help=".npz file to write (x, y, split), readable by --dataset")
    encode.add_argument("--what", choices=("mean", "sample", "posterior"), default="mean",
                        help="E_q[z|x]; one draw of q; or the mean and the posterior's sd (x_sd), a dataset whose "
                             "training rows are drawn afresh from q each time (M1+M2 as Kingma et al.) (default mean)")
    encode.add_argument("--batch-size", type=int, default=500)
    encode.add_argument("--data-dir", default=None)
    encode.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    encode.add_argument("--seed", type=seed_arg, default=0)

    add_quality_parsers(sub)
    sub.add_parser("guides", help="list the registered guides")
    return parser


def _train_config(args, **defaults) -> RunConfig:
    config = dataclasses.replace(RunConfig.load(args.config) if args.config else RunConfig(), **defaults)
    # how a run is launched comes from the command line, not from a config file used as a template
    config = dataclasses.replace(config, distributed=False, world_size=1)
    given = {f: getattr(args, f, None) for _, f, _ in TRAIN_FLAGS if getattr(args, f, None) is not None}
    option_flags = []  # the registry-declared option flags given, by their own names
    for flags, options_field in OPTION_FLAGS:
        options = {f: getattr(args, f) for _, f, _ in flags if getattr(args, f, None) is not None}
        if options:
            given[options_field] = {**getattr(config, options_field), **options}
            option_flags += sorted(options)
    if getattr(args, "distributed", None):
        given["distributed"] = True
    if getattr(args, "resume", False):
        extra = sorted(set(given) - RESUMABLE - {field for _, field in OPTION_FLAGS}) + option_flags
        if args.config:  # its fields would be ignored: a resumed run's config is its checkpoint's
            extra.insert(0, "config")
        if extra:
            flags = ", ".join("--" + e.replace("_", "-") for e in extra)
            raise PyroVAEError("--resume continues a run with its saved config; only --out, --epochs, --device and "
                               f"--distributed may be given (got {flags})")
    return dataclasses.replace(config, **given)


def cmd_train(args) -> int:
    from .distributed import launched_rank, launched_world_size
    from .train import fit

    config = _train_config(args)
    if not config.distributed and launched_world_size() > 1:
        raise PyroVAEError(f"started as one of {launched_world_size()} processes (WORLD_SIZE) without --distributed: "
                           "each would train its own copy into the same --out; add --distributed")
    progress = False if args.quiet else None
    # --resume keeps the run's own budget unless --epochs is given (config.epochs is a default then)
    run_dir = fit(config, resume=args.resume, progress=progress, epochs=args.epochs if args.resume else None)
    if launched_rank() == 0 or not config.distributed:
        print(f"trained: {run_dir}" + (f" ({launched_world_size()} ranks)" if config.distributed else ""))
    return 0


def cmd_compare(args) -> int:
    from .compare import compare

    positive("--iw-samples", args.iw_samples)
    positive("--images", args.images)
    if not args.guides:
        raise PyroVAEError("--guides names no guide; give comma-separated names, e.g. --guides diag,iaf")
    # a 2-D latent by default: it is the one where exact posteriors can be drawn
    config = _train_config(args, **({} if args.latent_dim or args.config else {"latent_dim": 2})).validate()
    table = compare(args.guides, config, args.out, runs=args.runs, iw_samples=args.iw_samples, images=args.images,
                    progress=False if args.quiet else None)
    from .compare import markdown

    print(markdown(table), end="")
    print(f"wrote {args.out}")
    return 0


def cmd_diagnose(args) -> int:
    import warnings

    from .diagnose import diagnose

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = diagnose(args.run_dirs, args.out, images=args.images, reference=args.reference, chains=args.chains,
                          warmup=args.warmup, draws=args.draws, iw_samples=args.iw_samples,
                          is_samples=args.is_samples, device=args.device, seed=args.seed, data_dir=args.data_dir)
    for w in report["warnings"]:
        print(f"pyro-vae: warning: {w}", file=sys.stderr)
    del caught  # library warnings (ArviZ, Pyro) are not the user's concern here
    by_guide = {}
    for r in report["per_image"]:
        by_guide.setdefault(r["guide"], []).append(r)
    for name, rows in by_guide.items():
        khat = [r["khat"] for r in rows]
        print(f"{name:<16} k-hat median {sorted(khat)[len(khat) // 2]:.2f}  max {max(khat):.2f}  "
              f"mean KL gap {sum(r['kl_gap'] for r in rows) / len(rows):.3f} nats")
    for note in report.get("notes", []):
        print(f"note: {note}")
    print(f"wrote {args.out}/diagnose.md")
    return 0


def cmd_guides(args) -> int:
    for name, spec in GUIDES.items():
        options = ", ".join(f"{k}={v}" for k, v in spec.options().items())
        layers = "one, or the bottom layer of several (bottom-up" + (", ladder)" if spec.meta.get("ladder") else ")")
        if spec.meta.get("model_driven"):
            layers = "one (--model vae or cvae: it follows the model's own log p(x, z))"
        print(f"{name:<12} {spec.about}  [{spec.reference}]" + (f"\n{'':<12} options: {options}" if options else "")
              + f"\n{'':<12} layers: {layers}")
    return 0


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "sample": cmd_sample, "compare": cmd_compare,
            "diagnose": cmd_diagnose, "encode": cmd_encode, "quality": cmd_quality, "refit-prior": cmd_refit_prior,
            "guides": cmd_guides}


def main(argv: list[str] | None = None) -> int:
    code = _main(argv)
    distributed = sys.modules.get("pyro_vae.distributed")
    if argv is None and distributed is not None and distributed.joined():
        # The process is the program (argv from the command line) and was a rank of a process group:
        # torch (2.14 with gloo, here) sometimes aborts a rank while the interpreter shuts down after
        # destroy_process_group, turning a finished job into a failed one; leave without that phase.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _main(argv: list[str] | None) -> int:
    try:
        return _run(argv)
    except BaseException as err:  # a KeyboardInterrupt, or an error it caused (an import it broke)
        if not interrupted(err):
            raise
        print("pyro-vae: interrupted", file=sys.stderr)
        return 130  # 128 + SIGINT, as a shell reports a program a Ctrl-C ended


def _run(argv: list[str] | None) -> int:
    try:
        args = _parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except PyroVAEError as err:
        print(f"pyro-vae: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # an unwritable --out, a full disk: the user's to fix, not a crash
        print(f"pyro-vae: error: {err.strerror or err}: {err.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as err:  # sizes too large to allocate: the user's to lower
        text = str(err)
        if not isinstance(err, MemoryError) and "allocate" not in text and "out of memory" not in text:
            raise
        asked = re.search(r"allocate (\d+) bytes", text)
        size = f" ({int(asked.group(1)) / 2**30:,.1f} GiB asked for)" if asked else ""
        print(f"pyro-vae: error: out of memory{size}: lower the sizes given (--hidden, --latent-dim, -n, "
              "--batch-size, --iw-samples)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
