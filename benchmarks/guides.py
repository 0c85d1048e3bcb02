"""Training-step cost of every registered guide, against the ``diag`` guide and plain PyTorch.

Each guide trains with the Monte-Carlo ``elbo`` objective (or ``--objective``), always named: a run's
default would be the analytic-KL ``meanfield`` for ``diag`` and ``const-var`` and ``elbo`` for the
others, so the guides would not compare on one estimator. Network and data are those of throughput.py (MLP
784-500-500-32, batch 128, Bernoulli pixels, random binary MNIST-shaped noise); the plain-PyTorch
diagonal VAE of throughput.py is the baseline. All contenders run interleaved in one process, so
load on the machine hits them alike; ratios are taken within a repeat, then the median over repeats.
The planar, IAF and coupling guides also run against hand-written plain-PyTorch VAEs of the same
mathematics and widths (plain_flows.py, rows ``plain-<guide>``, each starting from its suite pair's
parameters): the column "ratio to its hand-written" is a guide's time over its own contender's, the
diag guide's over the baseline's.
Flow families get K = ``--flows`` steps and their default hypernetwork width (``flow_hidden``,
(320, 320) for all of them today); the Hamiltonian guide runs once per ``--leapfrog`` count (rows
``hamiltonian-K<n>``); the JSON records every guide's options in full.

    python benchmarks/guides.py [--device cpu|cuda] [--repeats N] [--steps N] [--warmup N]
                                [--flows K] [--leapfrog 1,5,10] [--only planar,iaf] [--objective elbo-jit] [--out DIR]
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

from pyro_vae import guides, objectives, run
from pyro_vae.config import RunConfig
from pyro_vae.errors import PyroVAEError
from pyro_vae.io import write_text_atomic

sys.path.insert(0, str(Path(__file__).resolve().parent))  # throughput.py beside this file, however run
import plain_flows  # noqa: E402
import throughput as tp  # noqa: E402
import tiers  # noqa: E402

# From the project's issue: every guide's step at most 1.10x a hand-written plain-PyTorch step of
# the same mathematics, widths and optimizer
TARGET_RATIO = 1.10


def options_for(name: str, flows: int, leapfrog: int | None = None) -> dict:
    declared = guides.GUIDES[name].options()
    return {**({"flows": flows} if "flows" in declared else {}),
            **({"leapfrog": leapfrog} if "leapfrog" in declared and leapfrog is not None else {})}


def variants(names: list[str], flows: int, leapfrogs: list[int]) -> list[tuple[str, str, dict]]:
    """(row label, guide, options): one row per guide, the Hamiltonian guide once per leapfrog count."""
    out = []
    for name in names:
        if "leapfrog" in guides.GUIDES[name].options():
            out += [(f"{name}-K{k}", name, options_for(name, flows, k)) for k in leapfrogs]
        else:
            out.append((name, name, options_for(name, flows)))
    return out


def pair_for(name: str, options: dict, device):
    config = RunConfig(arch="mlp", hidden=tp.HIDDEN, latent_dim=tp.LATENT, activation="relu",
                       likelihood="bernoulli", guide=name, guide_options=options)
    return run.build(config, tp.OBS_SHAPE).to(device)


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def benchmark(device, names, flows: int, repeats: int, steps: int, warmup: int, seed: int, objective: str,
              leapfrogs=(5,), compile: bool = False):
    pyro.set_rng_seed(seed)
    batches = tp.random_batches(seed, device)
    beta = torch.ones((), device=device)
    contenders, params, totals, chosen, hand_written = [], {}, {}, {}, {"diag": "baseline"}
    for label, name, options in variants(names, flows, list(leapfrogs)):
        pair = pair_for(name, options, device)
        params[label], totals[label], chosen[label] = count(pair.guide), count(pair), (name, options)
        if name == "diag":  # the baseline starts from the diag pair's parameters, as in throughput.py
            plain = tp.baseline_from(pair)
            params["baseline"], totals["baseline"] = count(plain.encoder) + count(plain.head), count(plain)
            contenders.append(tp.Contender("baseline", plain, plain))
        elif name in plain_flows.PLAIN:  # built before priming, from the very parameters the suite starts with
            plain, hand_written[label] = plain_flows.plain_from(pair, name), f"plain-{label}"
            params[hand_written[label]] = count(plain) - count(plain.decoder)
            totals[hand_written[label]], chosen[hand_written[label]] = count(plain), (name, options)
            contenders.append(tp.Contender(hand_written[label], plain, plain))
        loss = objectives.loss_fn(objective, pair.model, pair.guide, 1)
        # compiled as --compile compiles it; the hand-written contenders stay eager, the yardstick
        contenders.append(tp.Contender(label, pair, loss, batches[0], beta, compile=compile))
    wall, busy = tp.time_interleaved(contenders, batches, beta, device, repeats, steps, warmup)
    compiled = {c.name: c.compile_seconds for c in contenders if c.compile_seconds is not None}
    results = {}
    for name in wall:
        to_diag = [t / d for t, d in zip(wall[name], wall["diag"])]
        to_base = [t / b for t, b in zip(wall[name], wall["baseline"])]
        own = hand_written.get(name)
        to_own = None if own is None else [t / h for t, h in zip(wall[name], wall[own])]
        results[name] = {"median_steps_per_s": statistics.median(steps / t for t in wall[name]),
                         "compile_seconds": compiled.get(name),
                         "median_ratio_to_diag": statistics.median(to_diag),
                         "median_ratio_to_baseline": statistics.median(to_base),
                         "hand_written": own,
                         "median_ratio_to_hand_written": None if own is None else statistics.median(to_own),
                         "guide_parameters": params[name],
                         "arithmetic_floor": totals[name] / totals["baseline"],
                         "guide_options": None if name == "baseline"
                         else {**guides.GUIDES[chosen[name][0]].options(), **chosen[name][1]},
                         "seconds_per_repeat": wall[name], "ratios_to_baseline_per_repeat": to_base,
                         "ratios_to_hand_written_per_repeat": to_own}
    return results, busy


def spread(ratios) -> tuple[str, str]:
    """(median, min - max) of per-repeat ratios, as table cells; dashes where there are none."""
    if ratios is None:
        return "-", "-"
    return f"{statistics.median(ratios):.3f}", f"{min(ratios):.3f} - {max(ratios):.3f}"


def markdown(report: dict) -> str:
    s, results = report["settings"], report["results"]
    widths = sorted({str(list(r["guide_options"]["flow_hidden"])) for r in results.values()
                     if "flow_hidden" in (r["guide_options"] or {})})
    lines = [f"# Training-step cost per guide ({report['device']}, {report['date']})", "",
             ("Every suite step compiled (`--compile`; the hand-written contenders eager), its first step (the "
              "compiling) timed apart: " + ", ".join(f"{n} {r['compile_seconds']:.0f} s" for n, r in results.items()
                                                   if r.get("compile_seconds") is not None) + ". "
              if s.get("compile") else "") +
             f"Objective `{s['objective']}`, batch {s['batch']}, MLP {s['network']}, K = {s['flows']} for flow "
             f"families (hypernetworks: hidden layers {' or '.join(widths) or '-'}), `hamiltonian-K<n>`: n leapfrog "
             f"steps (each a gradient of log p(x, z) with its second-order backward), {s['repeats']} repeats of "
             f"{s['steps']} steps per contender (interleaved in turns of {tp.CHUNK} steps) after {s['warmup']} "
             "warm-up steps; one step = zero_grad, loss / batch, backward, Adam. Baseline: the plain-PyTorch "
             "diagonal VAE of throughput.py; `plain-<guide>`: a hand-written plain-PyTorch VAE of that guide's "
             "mathematics and widths (plain_flows.py), tested equal to it in loss and gradients. Ratios are time per "
             "step over that of `diag`, the baseline or the guide's own hand-written contender (the baseline for "
             "`diag`) within a repeat, median over repeats. Parameters: the guide's, encoder trunk included. "
             "Arithmetic floor: parameters of model and guide over the baseline's. Every layer is dense, so the "
             "multiply-adds of the forward and backward passes and the work of Adam scale with the parameter count: "
             "the ratio a step would have if its time were all that arithmetic, as the baseline's nearly is. A "
             "compiled step can go a little below it: it also saves the elementwise work the eager baseline spends.", "",
             "| guide | median steps/s | ratio to diag | ratio to baseline | baseline ratio range "
             "| ratio to its hand-written | hand-written ratio range | guide parameters | arithmetic floor |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        own = spread(r["ratios_to_hand_written_per_repeat"])
        lines.append(f"| {name} | {r['median_steps_per_s']:.1f} | {r['median_ratio_to_diag']:.2f} "
                     f"| {r['median_ratio_to_baseline']:.2f} | {spread(r['ratios_to_baseline_per_repeat'])[1]} "
                     f"| {own[0]} | {own[1]} | {r['guide_parameters']:,} | {r['arithmetic_floor']:.2f} |")
    lines += ["", f"Target from the project's issue: every guide's step at most {TARGET_RATIO:.2f}x a hand-written "
              "plain-PyTorch step of the same mathematics, widths and optimizer (ratio to its hand-written), "
              "measured here for the guides that have one:"]
    if s["objective"] not in ("elbo", "elbo-jit"):
        lines[-1] = lines[-1][:-1] + (" (the hand-written contenders compute the Monte-Carlo ELBO, which "
                                      f"`{s['objective']}` may not):")
    for name, r in results.items():
        if r["hand_written"] is not None:
            ratio, low, high = (r["median_ratio_to_hand_written"], min(r["ratios_to_hand_written_per_repeat"]),
                                max(r["ratios_to_hand_written_per_repeat"]))
            verdict = "meets" if ratio <= TARGET_RATIO else "misses"
            lines.append(f"- {name}: {ratio:.3f}x `{r['hand_written']}` (repeats {low:.3f} - {high:.3f}), {verdict} "
                         "the target")
    lines += tp.caution_lines(report) + tp.facts_lines(report)
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    tp.timing_arguments(parser, steps=60, warmup=5)
    parser.add_argument("--flows", type=int, default=4, help="K, the number of flow steps")
    parser.add_argument("--leapfrog", default="5", help="comma-separated leapfrog counts of the hamiltonian guide")
    parser.add_argument("--only", help="comma-separated guides (diag and the baseline always run, so does "
                        "each chosen guide's hand-written contender where plain_flows.py has one)")
    # named, never left to RunConfig's default (meanfield for diag and const-var): see the docstring
    parser.add_argument("--objective", default="elbo", help="the objective every guide trains with")
    parser.add_argument("--compile", action="store_true", help="every suite step compiled (--compile); the "
                        "hand-written contenders stay eager")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be positive")
    try:
        leapfrogs = [int(k) for k in args.leapfrog.split(",") if k.strip()]
    except ValueError:
        parser.error(f"--leapfrog takes comma-separated integers, got {args.leapfrog!r}")
    if args.repeats < 1 or args.steps < 1 or args.warmup < 0 or args.flows < 1 or not leapfrogs \
            or min(leapfrogs) < 0:
        parser.error("--repeats, --steps and --flows must be positive, --warmup and --leapfrog non-negative")
    chosen = list(guides.GUIDES) if args.only is None else [n.strip() for n in args.only.split(",") if n.strip()]
    try:
        device = run.resolve_device(args.device)
        objectives.check_name(args.objective)
        for name in chosen:
            guides.check_name(name)
    except PyroVAEError as err:
        parser.error(str(err))
    names = ["diag"] + [n for n in dict.fromkeys(chosen) if n != "diag"]

    load_before = os.getloadavg()[0]
    with tiers.torch_threads(args.threads):
        results, busy = benchmark(device, names, args.flows, args.repeats, args.steps, args.warmup, args.seed,
                                  args.objective, leapfrogs, args.compile)
        machine = tp.facts(device, load_before, busy)
    report = {
        **machine,
        "settings": {"objective": args.objective, "compile": args.compile, "batch": tp.BATCH, "network": "784-500-500-32", "flows": args.flows,
                     "leapfrog": leapfrogs,
                     "likelihood": "bernoulli", "optimizer": f"Adam(lr={tp.LR})", "particles": 1,
                     "repeats": args.repeats, "steps": args.steps, "warmup": args.warmup, "seed": args.seed,
                     "data": "bernoulli(uniform) noise, 10 batches"},
        "target_ratio_to_hand_written": TARGET_RATIO,
        "hand_written": {name: r["hand_written"] for name, r in results.items() if r["hand_written"] is not None},
        "results": results,
    }
    out = Path(args.out)
    stem = f"guides-{device.type}" + ("" if args.objective == "elbo" else f"-{args.objective}") \
        + ("-compiled" if args.compile else "")
    write_text_atomic(out / f"{stem}-{report['date']}.json", json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    write_text_atomic(out / f"{stem}.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
