"""Training-step cost of two stochastic layers against one, with bottom-up and ladder inference.

The two-layer model is Burda et al. 2016's: 784-200-200-z1(100)-100-100-z2(50), tanh, Bernoulli
pixels, diagonal Gaussian layers; it runs with bottom-up inference q(z1|x) q(z2|z1), with ladder
inference (Sønderby et al. 2016), and with ladder inference and batch norm (the setting of the
standard tier's ladder cell). The baseline, the denominator of every ratio, is Burda et al.'s
one-layer model 784-200-200-50 tanh: the same x-side widths, the one-layer network the paper
sets beside the two-layer one, and the suite's ``burda`` cells. A one-layer model with z = 100
(the two-layer model's bottom layer alone) runs too, to tell the cost of the wider bottom layer
from that of the second layer.

Every contender trains the Monte-Carlo ``elbo`` (named: a run's default would be the analytic-KL
``meanfield`` for the one-layer and ladder pairs), batch 100, one sample, Adam at 1e-3, on random
binary MNIST-shaped batches (throughput does not depend on what the pixels show). All run
interleaved in one process (``throughput.time_interleaved``), so load on the machine hits them
alike; ratios are taken within a repeat, then the median over repeats. Arithmetic floor: the
parameters of model and guide over the baseline's (every layer is dense).

    python benchmarks/hierarchical.py [--device cpu|cuda] [--repeats N] [--steps N] [--warmup N]
                                      [--threads N] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import pyro
import torch

from pyro_vae import objectives, run
from pyro_vae.config import RunConfig
from pyro_vae.errors import PyroVAEError
from pyro_vae.io import write_text_atomic

sys.path.insert(0, str(Path(__file__).resolve().parent))  # throughput.py beside this file, however run
import throughput as tp  # noqa: E402

BATCH, HIDDEN, ACTIVATION, OBJECTIVE = 100, [200, 200], "tanh", "elbo"
BASELINE = "1-layer z50"
# name: (latent_dim, layer_hidden, inference, batch_norm, network as the table shows it)
CONTENDERS = {
    BASELINE: (50, None, "bottom-up", False, "784-200-200-z50"),
    "1-layer z100": (100, None, "bottom-up", False, "784-200-200-z100"),
    "2-layer bottom-up": ([100, 50], [100, 100], "bottom-up", False, "784-200-200-z100-100-100-z50"),
    "2-layer ladder": ([100, 50], [100, 100], "ladder", False, "784-200-200-z100-100-100-z50"),
    "2-layer ladder + BN": ([100, 50], [100, 100], "ladder", True, "784-200-200-z100-100-100-z50, batch norm"),
}


def config_for(name: str) -> RunConfig:
    latent, layer_hidden, inference, batch_norm, _ = CONTENDERS[name]
    return RunConfig(dataset="mnist", likelihood="bernoulli", arch="mlp", hidden=HIDDEN, activation=ACTIVATION,
                     latent_dim=latent, layer_hidden=layer_hidden, inference=inference, batch_norm=batch_norm,
                     guide="diag", objective=OBJECTIVE, batch_size=BATCH).validate()


def random_batches(seed: int, device, count: int = 10) -> list:
    """As ``throughput.random_batches``, with this benchmark's batch size."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.bernoulli(torch.rand(BATCH, *tp.OBS_SHAPE, generator=gen), generator=gen).to(device)
            for _ in range(count)]


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())  # shared modules (the ladder's) counted once


def benchmark(device, names, repeats: int, steps: int, warmup: int, seed: int):
    pyro.set_rng_seed(seed)
    batches = random_batches(seed, device)
    beta = torch.ones((), device=device)
    contenders, params = [], {}
    for name in names:
        pair = run.build(config_for(name), tp.OBS_SHAPE).to(device)
        params[name] = {"model": count(pair.model), "guide": count(pair.guide), "total": count(pair)}
        objectives.check_objective(OBJECTIVE, pair.model, pair.guide, batches[0])
        loss = objectives.loss_fn(OBJECTIVE, pair.model, pair.guide, 1)
        contenders.append(tp.Contender(name, pair, loss, batches[0], beta))
    wall, busy = tp.time_interleaved(contenders, batches, beta, device, repeats, steps, warmup)
    results = {}
    for name in wall:
        ratios = [t / b for t, b in zip(wall[name], wall[BASELINE])]
        results[name] = {"network": CONTENDERS[name][4], "inference": CONTENDERS[name][2],
                         "batch_norm": CONTENDERS[name][3],
                         "median_steps_per_s": statistics.median(steps / t for t in wall[name]),
                         "median_ratio_to_baseline": statistics.median(ratios),
                         "parameters": params[name],
                         "arithmetic_floor": params[name]["total"] / params[BASELINE]["total"],
                         "seconds_per_repeat": wall[name], "ratios_to_baseline_per_repeat": ratios}
    return results, busy


def markdown(report: dict) -> str:
    s, results = report["settings"], report["results"]
    lines = [f"# Training-step cost of hierarchical VAEs ({report['device']}, {report['date']})", "",
             f"Objective `{s['objective']}` (Monte-Carlo KL, one sample), batch {s['batch']}, tanh MLPs, Bernoulli "
             f"pixels, diagonal Gaussian layers, Adam 1e-3; {s['repeats']} repeats of {s['steps']} steps per "
             f"contender (interleaved in turns of {tp.CHUNK} steps) after {s['warmup']} warm-up steps, on random "
             "binary MNIST-shaped batches. One step = zero_grad, loss / batch, backward, Adam. Baseline: Burda et "
             "al.'s one-layer 784-200-200-50; the two-layer model is their 784-200-200-z1(100)-100-100-z2(50). "
             "Ratio: time per step over the baseline's within a repeat, median over repeats. Arithmetic floor: "
             "parameters of model and guide over the baseline's (the ladder's generative networks, shared by "
             "model and guide, counted once).", "",
             "| contender | network | inference | median steps/s | ratio to baseline | ratio range | parameters "
             "| arithmetic floor |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        low, high = min(r["ratios_to_baseline_per_repeat"]), max(r["ratios_to_baseline_per_repeat"])
        lines.append(f"| {name} | {r['network']} | {r['inference']} | {r['median_steps_per_s']:.1f} "
                     f"| {r['median_ratio_to_baseline']:.2f} | {low:.2f} - {high:.2f} "
                     f"| {r['parameters']['total']:,} | {r['arithmetic_floor']:.2f} |")
    lines += tp.caution_lines(report) + tp.facts_lines(report)
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    tp.timing_arguments(parser, steps=60, warmup=5)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--only", help="comma-separated contenders besides the baseline (default: all)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.steps < 1 or args.warmup < 0 or (args.threads is not None and args.threads < 1):
        parser.error("--repeats, --steps and --threads must be positive, --warmup non-negative")
    names = list(CONTENDERS) if args.only is None else \
        [BASELINE] + [n.strip() for n in args.only.split(",") if n.strip() and n.strip() != BASELINE]
    unknown = [n for n in names if n not in CONTENDERS]
    if unknown:
        parser.error(f"unknown contender {unknown[0]!r}; choose from {', '.join(CONTENDERS)}")
    try:
        device = run.resolve_device(args.device)
    except PyroVAEError as err:
        parser.error(str(err))
    before = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        load_before = os.getloadavg()[0]
        results, busy = benchmark(device, names, args.repeats, args.steps, args.warmup, args.seed)
        report = {
            **tp.facts(device, load_before, busy),
            "settings": {"objective": OBJECTIVE, "batch": BATCH, "hidden": HIDDEN, "activation": ACTIVATION,
                         "likelihood": "bernoulli", "guide": "diag", "optimizer": f"Adam(lr={tp.LR})", "particles": 1,
                         "baseline": BASELINE, "repeats": args.repeats, "steps": args.steps, "warmup": args.warmup,
                         "seed": args.seed, "data": "bernoulli(uniform) noise, 10 batches"},
            "results": results,
        }
    finally:
        torch.set_num_threads(before)
    out = Path(args.out)
    write_text_atomic(out / f"hierarchical-{device.type}-{report['date']}.json", json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    write_text_atomic(out / f"hierarchical-{device.type}.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
