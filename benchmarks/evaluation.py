"""Importance-sampled NLL: the suite's estimator on its two paths against a hand-written plain-PyTorch
one, and the memory the suite's estimator needs.

Three estimators use the same networks (MLP 784-500-500-32, Bernoulli pixels, diagonal Gaussian
guide), the same K samples per image drawn in the same chunks, and a running log-sum-exp; only how
log p(x, z) - log q(z|x) is computed differs:

- ``suite``: ``pyro_vae.evaluate.per_datapoint`` on its single-site fast path
  (``log_weight_terms``: the guide's ``dist`` and the model's ``log_terms``, no Pyro trace);
- ``trace``: the same ``per_datapoint`` with ``weight_terms=trace_weight_terms``, the general path
  through Pyro traces that any model of the contract takes;
- ``baseline``: tensor code, on the images flattened to rows.

They alternate on the same image-shaped (N, 1, 28, 28) batches, several repeats, in one process,
with glibc's allocator set as the suite sets it, each from the same seed, so all three must give
the same estimates (to float rounding; ``max_abs_diff_log_px`` reports it). ``median_ratio`` is
suite / baseline time within a repeat, ``median_ratio_trace`` trace / baseline and
``median_ratio_suite_to_trace`` suite / trace: below 1 when the fast path is faster.

``--memory N`` runs the suite's ``evaluate`` alone on N MNIST-shaped images with K samples, for
each guide named (``--guide``; every registered guide by default) on the same 784-500-500-32
Bernoulli model, each in a fresh process so its peak resident memory is that evaluation's; it
writes ``evaluation-memory-cpu-<date>.json`` and ``evaluation-memory-cpu.md`` (see ``memory``).

    python benchmarks/evaluation.py [--device cpu|cuda] [--iw-samples 5000] [--images 100]
    python benchmarks/evaluation.py --memory 500 [--guide iaf,spline] [--iw-samples 5000] [--out DIR]
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pyro
import torch
import torch.nn.functional as F

from pyro_vae import contract, guides
from pyro_vae.errors import PyroVAEError
from pyro_vae.evaluate import (_chunk_size, _elements_per_sample, active_units_per_site, evaluate, guide_elements,
                               log_weight_terms, model_elements, per_datapoint, retain_freed_memory,
                               trace_weight_terms)
from pyro_vae.guides.base import MEAN_CHUNK
from pyro_vae.io import write_text_atomic

sys.path.insert(0, str(Path(__file__).resolve().parent))
import guides as guide_benchmark  # noqa: E402  (benchmarks/guides.py: one pair per guide)
from live_memory import LiveTensors  # noqa: E402
from throughput import LOG_2PI, OBS_SHAPE, baseline_from, facts, facts_lines, suite_pair  # noqa: E402

# evaluate's own settings, read from it so the figures follow any change there
BATCH = inspect.signature(evaluate).parameters["batch_size"].default
MAX_ELEMENTS = inspect.signature(evaluate).parameters["max_elements"].default
UNITS_BATCH = inspect.signature(active_units_per_site).parameters["batch_size"].default
TARGET_MIB = 1024  # from the project's issue: under 1 GiB above the loaded model and data


@torch.no_grad()
def plain_log_px(plain, x: torch.Tensor, samples: int, chunk: int) -> torch.Tensor:
    """log (1/K) sum_k p(x, z_k) / q(z_k|x) per image, z_k ~ q, in chunks of ``chunk`` samples;
    images (N, *OBS_SHAPE) are scored as flat rows (N, D)."""
    x = x.flatten(1)
    loc, raw = plain.head(plain.encoder(x)).chunk(2, dim=-1)
    scale = 1e-5 + F.softplus(raw)
    lse = torch.full((x.shape[0],), -math.inf, device=x.device)
    done = 0
    while done < samples:
        k = min(chunk, samples - done)
        z = loc + scale * torch.randn((k,) + loc.shape, device=x.device)
        log_lik = -F.binary_cross_entropy_with_logits(plain.decoder(z), x.expand(k, -1, -1), reduction="none").sum(-1)
        log_prior = (-0.5 * z.pow(2) - 0.5 * LOG_2PI).sum(-1)
        log_q = (-0.5 * ((z - loc) / scale).pow(2) - scale.log() - 0.5 * LOG_2PI).sum(-1)
        lse = torch.logaddexp(lse, torch.logsumexp(log_lik + log_prior - log_q, 0))
        done += k
    return lse - math.log(samples)


def speed(device, samples: int, images: int, repeats: int, batch: int) -> dict:
    retain_freed_memory()  # as the suite's estimator sets it, for both contenders from the start
    pyro.set_rng_seed(0)
    pair = suite_pair(device).eval()
    plain = baseline_from(pair).eval()
    x = torch.bernoulli(torch.rand(images, *OBS_SHAPE, device=device))  # image-shaped, as the suite takes them
    # as per_datapoint chunks them
    chunk = _chunk_size(samples, batch, _elements_per_sample(pair.model, x[:batch], pair.guide), 2**23)
    runs = {"suite": lambda xb: per_datapoint(pair.model, pair.guide, xb, samples)["log_px"],
            "baseline": lambda xb: plain_log_px(plain, xb, samples, chunk),
            "trace": lambda xb: per_datapoint(pair.model, pair.guide, xb, samples,
                                              weight_terms=trace_weight_terms)["log_px"]}
    times = {name: [] for name in runs}
    estimates = {}
    with pyro.validation_enabled(False):
        for _ in range(repeats):
            for name, fn in runs.items():
                pyro.set_rng_seed(1)
                start = time.perf_counter()
                estimates[name] = torch.cat([fn(x[i:i + batch]) for i in range(0, images, batch)])
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - start)
    ratios = [s / b for s, b in zip(times["suite"], times["baseline"])]
    ratios_trace = [t / b for t, b in zip(times["trace"], times["baseline"])]
    ratios_suite_to_trace = [s / t for s, t in zip(times["suite"], times["trace"])]
    return {"images_per_s": {k: images / statistics.median(v) for k, v in times.items()},
            "median_ratio": statistics.median(ratios), "ratios": ratios,
            "median_ratio_trace": statistics.median(ratios_trace), "ratios_trace": ratios_trace,
            "median_ratio_suite_to_trace": statistics.median(ratios_suite_to_trace),
            "ratios_suite_to_trace": ratios_suite_to_trace,
            "mean_log_px": {k: v.mean().item() for k, v in estimates.items()},
            # per-image estimates of the last repeat against the suite's: float rounding only
            "max_abs_diff_log_px": {k: (v - estimates["suite"]).abs().max().item()
                                    for k, v in estimates.items() if k != "suite"},
            "seconds": times, "chunk": chunk}


def _max_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


@torch.no_grad()
def live_peaks(pair, x: torch.Tensor, chunk: int, rows: int) -> tuple[float, float]:
    """MiB of tensors held at once by one chunk of the importance-sampled estimate on a batch of
    ``x`` and by one batch of the active units' posterior means, counted op by op."""
    pair.eval()
    batch = x[:BATCH]
    with pyro.validation_enabled(False), pair.guide.reuse_features(batch):
        with LiveTensors() as nll:
            log_weight_terms(pair.model, pair.guide, batch, chunk)
    with pyro.validation_enabled(False), LiveTensors() as units:
        contract.site_means(pair.guide, x[:rows])
    return nll.peak / 2**20, units.peak / 2**20


def memory(name: str, images: int, samples: int, threads: int = 0) -> dict:
    """The guide ``name`` (its registered options) on the 784-500-500-32 Bernoulli MLP: evaluate on
    ``images`` random binary MNIST-shaped images with ``samples`` importance samples, run in this
    process, which must be a fresh one: its peak resident memory is then the evaluation's.

    ``rss_loaded_mib`` is the peak once the pair is built and the images made, so ``above_mib``
    is what the evaluation adds to the loaded model and data. ``chunk``: the samples per chunk of a
    batch of images; ``units_rows``: the images per batch of the active units' posterior means; the
    ``live_*`` figures: the tensors one chunk and one such batch hold (after the timed run).
    ``threads``: torch's threads, 0 for its default."""
    if threads:
        torch.set_num_threads(threads)
    pyro.set_rng_seed(0)
    pair = guide_benchmark.pair_for(name, {}, torch.device("cpu"))
    x = torch.bernoulli(torch.rand(images, *OBS_SHAPE))
    loaded = _max_rss_mib()
    batch = x[:BATCH]
    declared = {"model": model_elements(pair.model, batch), "guide": guide_elements(pair.guide, batch)}
    chunk = _chunk_size(samples, batch.shape[0], _elements_per_sample(pair.model, batch, pair.guide), MAX_ELEMENTS)
    rows = _chunk_size(UNITS_BATCH, MEAN_CHUNK, declared["guide"], MAX_ELEMENTS)
    start = time.perf_counter()
    with pyro.validation_enabled(False):
        result = evaluate(pair.model, pair.guide, x, iw_samples=samples)
    seconds = time.perf_counter() - start
    peak = _max_rss_mib()
    live_chunk, live_units = live_peaks(pair, x, chunk, rows)
    return {"guide": name, "guide_options": guides.GUIDES[name].options(), "images": images, "iw_samples": samples,
            "peak_rss_mib": peak, "rss_loaded_mib": loaded, "above_mib": peak - loaded,
            "chunk": chunk, "batch": batch.shape[0], "elements_per_sample": declared, "units_rows": rows,
            "live_chunk_mib": live_chunk, "live_units_batch_mib": live_units,
            # the images that fill one batch of each pass: the whole split's peak needs no more
            "images_for_full_peak": max(BATCH, rows), "seconds": seconds, "nll": result["nll"],
            "torch_threads": torch.get_num_threads()}


def run_memory(names: list[str], images: int, samples: int, threads: int = 0) -> dict:
    """``memory`` for each guide, each in a fresh process: name -> its result."""
    here = str(Path(__file__).resolve().parent)
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); import evaluation; "
            "print(json.dumps(evaluation.memory(sys.argv[2], *map(int, sys.argv[3:]))))")
    results = {}
    for name in names:
        out = subprocess.run([sys.executable, "-c", code, here, name, str(images), str(samples), str(threads)],
                             capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(f"the {name} guide's evaluation failed:\n{out.stderr[-2000:]}")
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
        r = results[name]
        print(f"{name}: {r['above_mib']:.0f} MiB above model and data (peak {r['peak_rss_mib']:.0f}), "
              f"chunk {r['chunk']}, {r['seconds']:.1f} s", flush=True)
    return results


def memory_markdown(report: dict) -> str:
    s, results = report["settings"], report["results"]
    lines = [f"# Evaluation memory per guide ({report['device']}, {report['date']})", "",
             f"Generated by `python benchmarks/evaluation.py --memory {s['images']} --iw-samples {s['iw_samples']}"
             + (f" --threads {s['threads']}" if s["threads"] else "") + "`. "
             f"`evaluate` (NLL with K = {s['iw_samples']} importance samples, ELBO and active units) on {s['images']} "
             f"random binary MNIST-shaped images, MLP {s['network']}, Bernoulli pixels, each guide with its "
             "registered options, each in a fresh process. Loaded: the process's peak resident memory once the "
             "pair is built and the images made; above: the peak after `evaluate` minus that, the target being "
             f"under {TARGET_MIB} MiB.", "",
             "Peak memory is that of one batch, so it does not grow with the number of images: `evaluate` scores "
             f"{s['batch']} images at a time, drawing the K samples in chunks of at most {s['max_elements']:,} numbers "
             "(the chunk column: samples per chunk, from the numbers the model and the guide declare per particle "
             "and datapoint), and counts active units in batches whose Monte-Carlo posterior means draw "
             f"{MEAN_CHUNK} samples per row within the same budget (the rows column); each batch's tensors are "
             "freed before the next one, so the whole test split peaks as its first batch of each pass does. "
             "A run on at least as many images as the larger of the two batches (the last column) has the whole "
             "split's peak; † marks guides this run had fewer for.", "",
             "Live: the tensors one chunk of the estimate and one batch of the means hold at once, counted op by op "
             "(benchmarks/live_memory.py). The rest of the resident memory above the loaded pair is the libraries' "
             "first-use allocations and freed heap the C library keeps for reuse (up to 256 MiB, "
             "`pyro_vae.evaluate.retain_freed_memory`), which is why two runs of one guide can differ by "
             "a hundred MiB.", "",
             "| guide | peak RSS MiB | loaded MiB | above MiB | under target | chunk (samples) | numbers per particle "
             "(model + guide) | rows per means batch | live chunk MiB | live means batch MiB | seconds | NLL | "
             "images for the full peak |",
             "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        e = r["elements_per_sample"]
        short = " †" if s["images"] < r["images_for_full_peak"] else ""
        lines.append(f"| {name}{short} | {r['peak_rss_mib']:.0f} | {r['rss_loaded_mib']:.0f} | {r['above_mib']:.0f} "
                     f"| {'yes' if r['above_mib'] < TARGET_MIB else '**no**'} | {r['chunk']} "
                     f"| {e['model']:,} + {e['guide']:,} | {r['units_rows']} | {r['live_chunk_mib']:.1f} "
                     f"| {r['live_units_batch_mib']:.1f} | {r['seconds']:.1f} | {r['nll']:.2f} "
                     f"| {r['images_for_full_peak']} |")
    m = report["machine"]
    if m["process_cpu_seconds_per_wall_second"] < 0.75 * m["torch_threads"]:
        lines += ["", f"Other processes competed for the cores ({m['process_cpu_seconds_per_wall_second']:.2f} CPU "
                  f"seconds per second with {m['torch_threads']} torch threads): the seconds are high and unsteady; "
                  "the memory figures do not depend on it."]
    lines += facts_lines(report)
    return "\n".join(lines) + "\n"


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--iw-samples", type=int, default=5000)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory", type=int, default=0, metavar="N", help="measure peak memory on N images")
    parser.add_argument("--guide", metavar="NAME[,NAME...]",
                        help="--memory: the guides (default: every registered one)")
    parser.add_argument("--threads", type=int, default=0, help="--memory: torch threads (default: torch's)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda asked for but no GPU is available")
    if args.memory < 0 or args.iw_samples < 1 or args.threads < 0:
        parser.error("--memory and --threads must be non-negative, --iw-samples positive")
    names = list(guides.GUIDES) if args.guide is None else [n.strip() for n in args.guide.split(",") if n.strip()]
    try:
        for name in names:
            guides.check_name(name)
    except PyroVAEError as err:
        parser.error(str(err))
    if not names:
        parser.error("--guide names no guide")
    load_before = os.getloadavg()[0]
    wall, cpu = time.perf_counter(), time.process_time() + _children_cpu()
    if args.memory:
        device = torch.device("cpu")
        report = {"settings": {"images": args.memory, "iw_samples": args.iw_samples, "batch": BATCH,
                               "max_elements": MAX_ELEMENTS, "network": "784-500-500-32", "likelihood": "bernoulli",
                               "data": "bernoulli(uniform) noise", "seed": 0, "threads": args.threads},
                  "results": run_memory(names, args.memory, args.iw_samples, args.threads)}
        name = f"evaluation-memory-cpu-{datetime.date.today()}.json"
    else:
        device = torch.device(args.device)
        report = {**speed(device, args.iw_samples, args.images, args.repeats, args.batch),
                  "iw_samples": args.iw_samples, "images": args.images, "batch": args.batch}
        name = f"evaluation-{args.device}-{datetime.date.today()}.json"
    busy = (time.process_time() + _children_cpu() - cpu) / (time.perf_counter() - wall)
    report.update(facts(device, load_before, busy))
    if args.memory:  # the threads of the measured processes, not of this parent
        report["machine"]["torch_threads"] = next(iter(report["results"].values()))["torch_threads"]
    out = Path(args.out)
    write_text_atomic(out / name, json.dumps(report, indent=2) + "\n")
    if args.memory:
        text = memory_markdown(report)
        write_text_atomic(out / "evaluation-memory-cpu.md", text)
        print(text)
    else:
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
