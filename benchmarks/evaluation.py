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

``--memory N`` runs the suite's ``evaluate`` alone on N MNIST-shaped images with K samples and
reports the process's peak resident memory, in a fresh process so the peak is the evaluation's.

    python benchmarks/evaluation.py [--device cpu|cuda] [--iw-samples 5000] [--images 100]
    python benchmarks/evaluation.py --memory 10000 [--iw-samples 5000]
"""

from __future__ import annotations

import argparse
import datetime
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

from pyro_vae.evaluate import _chunk_size, evaluate, per_datapoint, retain_freed_memory, trace_weight_terms
from pyro_vae.io import write_text_atomic

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import LOG_2PI, OBS_SHAPE, baseline_from, facts, suite_pair  # noqa: E402


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
    chunk = _chunk_size(samples, batch, 4 * x[0].numel(), 2**23)  # as per_datapoint chunks them
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


def memory(images: int, samples: int) -> dict:
    """Peak RSS of the suite's evaluate on ``images`` MNIST-shaped images (run in its own process)."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    pyro.set_rng_seed(0)
    pair = suite_pair(torch.device("cpu"))
    x = torch.bernoulli(torch.rand(images, *OBS_SHAPE))
    start = time.perf_counter()
    with pyro.validation_enabled(False):
        result = evaluate(pair.model, pair.guide, x, iw_samples=samples)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"images": images, "iw_samples": samples, "seconds": time.perf_counter() - start,
            "peak_rss_mib": peak / 1024, "rss_before_mib": before / 1024, "nll": result["nll"]}


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
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda asked for but no GPU is available")
    load_before = os.getloadavg()[0]
    wall, cpu = time.perf_counter(), time.process_time() + _children_cpu()
    if args.memory:
        # a fresh process: the peak resident memory then belongs to this evaluation alone
        out = subprocess.run([sys.executable, "-c", "import json, sys; sys.path.insert(0, sys.argv[1]); "
                              "import evaluation; print(json.dumps(evaluation.memory(int(sys.argv[2]), int(sys.argv[3]))))",
                              str(Path(__file__).resolve().parent), str(args.memory), str(args.iw_samples)],
                             check=True, capture_output=True, text=True)
        device = torch.device("cpu")
        report = json.loads(out.stdout.strip().splitlines()[-1])
        name = f"evaluation-memory-cpu-{datetime.date.today()}.json"
    else:
        device = torch.device(args.device)
        report = {**speed(device, args.iw_samples, args.images, args.repeats, args.batch),
                  "iw_samples": args.iw_samples, "images": args.images, "batch": args.batch}
        name = f"evaluation-{args.device}-{datetime.date.today()}.json"
    busy = (time.process_time() + _children_cpu() - cpu) / (time.perf_counter() - wall)
    report.update(facts(device, load_before, busy))
    write_text_atomic(Path(args.out) / name, json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
