"""Side-by-side comparison of guides: the same data, decoder architecture, seed, optimizer and
budget for each, then the same evaluation, a table, and pictures of the posteriors.

For a 2-D latent the exact posterior p(z|x) of each trained model is computed on a grid
(:mod:`pyro_vae.exact`), which also gives log p(x) to quadrature accuracy.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pyro
import torch

from . import guides as guides_mod
from . import models
from .config import RunConfig
from .errors import PyroVAEError
from .evaluate import evaluate
from .exact import GRID_BOX, grid_posterior
from .io import write_text_atomic
from .run import load_data, load_run, resolve_device
from .train import fit


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())

def _train_or_load(names: list[str], base: RunConfig, out: Path, runs: list[str] | None, progress) -> dict:
    if runs:
        if len(runs) != len(names):
            raise PyroVAEError(f"--runs gives {len(runs)} directories for {len(names)} guides")
        for name, run_dir in zip(names, runs):  # a table must not publish one guide's run under another's name
            trained = load_run(run_dir).config.guide
            if trained != name:
                raise PyroVAEError(f"--runs: {run_dir} was trained with --guide {trained}, not {name}")
        return dict(zip(names, runs))
    configs = {}
    for name in names:  # every guide's options checked before any is trained
        options = {k: v for k, v in base.guide_options.items() if k in guides_mod.GUIDES[name].options()}
        guides_mod.check_options(name, options)
        configs[name] = dataclasses.replace(base, guide=name, guide_options=options, out=str(out / "runs" / name))
    return {name: str(fit(config, progress=progress)) for name, config in configs.items()}


def compare(names: list[str], base: RunConfig, out: str | Path, runs: list[str] | None = None,
            iw_samples: int = 1000, images: int = 4, progress=None) -> dict:
    """Train (or load) one run per guide, evaluate each on the test split, write
    ``compare.json``, ``compare.md`` and, for 2-D latents, ``posteriors.png`` and
    ``interpolations.png`` into ``out``; return the table as a dict."""
    for name in names:
        guides_mod.check_name(name)
    if models.MODELS[base.model].labels:
        raise PyroVAEError(f"compare draws posteriors and interpolations of unconditional models; --model {base.model} "
                           "takes labels: use --model vae")
    if len(set(names)) != len(names):
        raise PyroVAEError("each guide may appear once in --guides")
    out = Path(out)
    if not runs and out.exists() and any(out.iterdir()):
        raise PyroVAEError(f"output directory {out} already exists and is not empty")
    dirs = _train_or_load(names, base, out, runs, progress)
    device = resolve_device(base.device)
    loaded = {name: load_run(d, device) for name, d in dirs.items()}
    first = next(iter(loaded.values()))
    for name, run in loaded.items():
        if models.MODELS[run.config.model].labels:
            raise PyroVAEError(f"run {dirs[name]} takes labels (--model {run.config.model}); compare takes "
                               "unconditional runs")
        if (run.config.dataset, run.obs_shape, run.config.latent_dim) != (first.config.dataset, first.obs_shape,
                                                                           first.config.latent_dim):
            raise PyroVAEError(f"run {dirs[name]} has another dataset or latent size than {dirs[names[0]]}")
    data = load_data(first.config)
    x_test = data.observations("test", device)
    rows = []
    for name, run in loaded.items():
        pyro.set_rng_seed(base.seed)
        result = evaluate(run.pair.model, run.pair.guide, x_test, iw_samples=iw_samples)
        history = run.payload["train_state"]["history"]
        seconds = [h["seconds"] for h in history]
        row = {"guide": name, "run": dirs[name], "objective": run.config.objective, **result,
               "guide_parameters": _count(run.pair.guide),
               "model_parameters": _count(run.pair.model), "epochs": len(history),
               "seconds_per_epoch": sum(seconds) / len(seconds) if seconds else float("nan")}
        if run.config.latent_dim == 2:
            row["nll_quadrature"] = -grid_posterior(run.pair.model, x_test)[2].mean().item()
        rows.append(row)
    table = {"dataset": first.config.dataset, "latent_dim": first.config.latent_dim, "iw_samples": iw_samples,
             "seed": base.seed, "rows": rows}
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "compare.json", json.dumps(table, indent=2) + "\n")
    write_text_atomic(out / "compare.md", markdown(table))
    if first.config.latent_dim == 2 and len(first.obs_shape) == 3:
        from .plots import interpolations, posterior_panels

        pairs = {name: run.pair for name, run in loaded.items()}
        posterior_panels(pairs, x_test[:images], out / "posteriors.png")
        labels = data.y["test"]
        # the first test image and the first one of another class (or simply the next one)
        other = 1 if labels is None else int(torch.nonzero(labels != labels[0])[0, 0])
        interpolations(pairs, x_test[0:1], x_test[other:other + 1], data.obs_shape, out / "interpolations.png")
    return table


def markdown(table: dict) -> str:
    k = table["iw_samples"]
    lines = [f"# Guides compared on {table['dataset']} (latent dim {table['latent_dim']}, seed {table['seed']})", "",
             f"Nats per test datapoint. NLL: importance-weighted estimate with K = {k} samples ± standard error.", "",
             "Each guide trains with its default objective unless --objective names one: the analytic-KL "
             "`meanfield` where q has a closed-form KL to the prior, the Monte-Carlo `elbo` otherwise.", "",
             f"| guide | objective | test ELBO | NLL (K={k}) | KL | active units | guide params | s/epoch | epochs |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in table["rows"]:
        lines.append(f"| {r['guide']} | {r.get('objective', '')} | {r['elbo']:.2f} ± {r['elbo_se']:.2f} | {r['nll']:.2f} ± {r['nll_se']:.2f} | "
                     f"{r['kl']:.2f} | {r['active_units']}/{r['latent_dim']} | {r['guide_parameters']} | "
                     f"{r['seconds_per_epoch']:.2f} | {r['epochs']} |")
    if table["latent_dim"] == 2:
        lines += ["", "With a 2-D latent, log p(x) is also computed by quadrature of p(x, z) on a grid over "
                  f"[-{GRID_BOX:g}, {GRID_BOX:g}]² (120 x 120 midpoints; the same test images): "
                  + ", ".join(f"{r['guide']} {r['nll_quadrature']:.2f}" for r in table["rows"]) + "."]
    return "\n".join(lines) + "\n"
