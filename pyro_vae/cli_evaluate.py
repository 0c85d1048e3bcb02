"""``pyro-vae evaluate``: the test ELBO, the importance-sampled NLL and the active units of a run."""

from __future__ import annotations

import json
import math
from pathlib import Path

from .cli_draw import positive, print_then_write
from .errors import PyroVAEError
from .likelihoods import LIKELIHOODS
from .models import MODELS


def _conditional(result: dict) -> bool:
    spec = MODELS.get(result.get("model", "vae"))
    return spec is not None and spec.conditional


def _per_site(values: dict, fmt: str) -> str:
    return "  (" + ", ".join(f"{name} {fmt.format(v)}" for name, v in values.items()) + ")" if len(values) > 1 else ""


def format_eval(result: dict) -> str:
    rows = [
        ("run", result["run"]),
        ("split", f"{result['split']} (n={result['n']})"),
        ("ELBO", f"{result['elbo']:.3f} ± {result['elbo_se']:.3f} nats/datapoint"),
        ("  reconstruction", f"{result['recon']:.3f}"),
        ("  KL", f"{result['kl']:.3f}" + _per_site(result.get("kl_per_site", {}), "{:.3f}")),
        (f"NLL (K={result['iw_samples']})", f"{result['nll']:.3f} ± {result['nll_se']:.3f} nats/datapoint"
                                            + (" (-log p(x|y), given the label)" if _conditional(result) else "")),
        ("active units", f"{result['active_units']} / {result['latent_dim']}"
                         + _per_site(result.get("active_units_per_site", {}), "{}")),
    ]
    if "nll_bits_per_dim" in result:
        rows.append(("bits/dim", f"ELBO {result['elbo_bits_per_dim']:.4f} ± {result['elbo_bits_per_dim_se']:.4f}, "
                                 f"NLL {result['nll_bits_per_dim']:.4f} ± {result['nll_bits_per_dim_se']:.4f}"))
    if "classification_error" in result:
        rows.append(("classification", f"{100 * result['classification_error']:.2f} % error (argmax q(y|x))"))
    return "\n".join(f"{k:<18} {v}" for k, v in rows)


def cmd_evaluate(args) -> int:
    import pyro

    from .evaluate import evaluate
    from .run import load_run_and_data, resolve_device

    positive("--iw-samples", args.iw_samples)
    positive("--batch-size", args.batch_size)
    device = resolve_device(args.device)
    checkpoint, data = load_run_and_data(args.run_dir, device, args.data_dir)
    pyro.set_rng_seed(args.seed)
    spec = MODELS[checkpoint.config.model]
    x = data.observations(args.split, device)
    labels = data.labels(args.split, device) if spec.conditional else None
    try:
        result = evaluate(checkpoint.pair.model, checkpoint.pair.guide, x, labels, iw_samples=args.iw_samples,
                          batch_size=args.batch_size)
    except ValueError as err:  # torch's check of a distribution's parameters: NaN or Inf from the networks
        if "Expected parameter" not in str(err):
            raise
        raise PyroVAEError(f"the model or guide gives non-finite parameters on the {args.split} split ("
                           f"{str(err).splitlines()[0][:120]}): a diverged or corrupted checkpoint?; nothing written") from None
    if spec.semi_supervised:  # bounds of log p(x), the label summed out; and the classifier q(y|x)
        from .semisupervised import classification_error

        result["classification_error"] = classification_error(checkpoint.pair.guide, x, data.labels(args.split, device))
    if LIKELIHOODS[checkpoint.config.likelihood].meta.get("levels") == 256:  # 8-bit images: bits per dimension too
        from .evaluate import bits_per_dim

        result.update(bits_per_dim(result, data.obs_dim))
    bad = [k for k in ("elbo", "nll") if not math.isfinite(result[k])]
    if bad:
        raise PyroVAEError(f"the {' and the '.join(k.upper() for k in bad)} came out {result[bad[0]]} on the {args.split} "
                           "split: the model or guide gives a non-finite log-density on these images (a diverged "
                           "or corrupted checkpoint?); nothing written")
    result = {"run": str(args.run_dir), "split": args.split, "dataset": checkpoint.config.dataset,
              "model": checkpoint.config.model, "guide": checkpoint.config.guide,
              "prior": checkpoint.config.prior, "epoch": checkpoint.train_state.epoch, **result}
    name = "eval.json" if args.split == "test" else f"eval-{args.split}.json"
    return print_then_write(Path(args.run_dir) / name, result, json.dumps(result) if args.json else format_eval(result))
