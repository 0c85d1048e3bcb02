"""Training-step throughput of the suite's VAE step against a plain-PyTorch VAE.

The contenders share one network layout (MLP 784-500-500-32, ReLU, Bernoulli pixels, diagonal
Gaussian guide), start from identical parameters and run the same step: zero_grad, loss / batch,
backward, Adam. Only how the negative ELBO is computed differs:

- ``baseline``: hand-written tensor code, the Monte-Carlo KL; ``baseline-kl`` the same with the KL
  in closed form, the mathematics of ``meanfield``; ``baseline-compiled`` the baseline compiled.
- the suite's objectives, each named (a run's default for this pair is ``meanfield``): ``elbo``
  and ``meanfield`` on their direct form (``pyro_vae.direct``, what training uses for the suite's
  pairs), ``elbo-traced`` the same bound through Pyro's traces (what a user's model gets),
  ``elbo-jit`` (JitTrace_ELBO), ``elbo-compiled`` (``--compile``), and Pyro's stock ``Trace_ELBO``.

Each suite contender's ratio is to the hand-written step of the same mathematics (``REFERENCE``).
The data is random binary MNIST-shaped noise, image-shaped (N, 1, 28, 28) as the suite's models
take it (the baseline flattens it itself): throughput does not depend on what the pixels show.
A compiled contender's first call (its compiling) is timed apart, in ``compile_seconds``.

    python benchmarks/throughput.py [--device cpu|cuda] [--repeats N] [--steps N] [--warmup N] [--out DIR]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pyro
import torch
import torch.nn.functional as F
from torch import nn

from pyro_vae import guides, nets, objectives, run
from pyro_vae.config import RunConfig
from pyro_vae.errors import PyroVAEError
from pyro_vae.io import write_text_atomic
from pyro_vae.train import _compiled, _prime

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiers  # noqa: E402  (torch threads for the run)

OBS_SHAPE, LATENT, HIDDEN, BATCH, LR = (1, 28, 28), 32, [500, 500], 128, 1e-3
SUITE = ("elbo", "meanfield", "elbo-traced", "elbo-jit", "elbo-compiled")
# Pyro's stock Trace_ELBO, for reference: the suite's `elbo` computes the same estimator leaner
STOCK = "Trace_ELBO"
PLAIN = ("baseline", "baseline-kl", "baseline-compiled")
CONTENDERS = PLAIN + SUITE + (STOCK,)
# the hand-written step of the same mathematics each contender is timed against
REFERENCE = {name: "baseline" for name in CONTENDERS} | {"meanfield": "baseline-kl", "baseline-kl": "baseline-kl"}
CHUNK = 10
# from the project's issue: ratios to the hand-written step of the same mathematics
TARGETS = {"elbo": ("<=", 1.10), "meanfield": ("<=", 1.05), "elbo-compiled": ("<", 1.0)}
LOG_2PI = math.log(2 * math.pi)
# Pyro's JitTrace_ELBO calls torch.jit.trace, which torch now flags as deprecated: nothing to act on here.
warnings.filterwarnings("ignore", message=".*torch.jit.trace.* is deprecated", category=FutureWarning)


class PlainVAE(nn.Module):
    """The same networks as the suite's ``diag`` guide and MLP decoder, without Pyro (this file's
    widths unless given)."""

    def __init__(self, analytic_kl: bool = False, obs_shape=OBS_SHAPE, latent: int = LATENT, hidden=HIDDEN):
        super().__init__()
        self.encoder, features, self.decoder = nets.build("mlp", obs_shape, latent, hidden, "relu", 1)
        self.head = nn.Linear(features, 2 * latent)
        self.analytic_kl = analytic_kl

    def terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log p(x|z), KL term) per row for one reparameterized sample per image; images (N, *obs_shape)
        or flat rows (N, D). The KL is the Monte-Carlo log q - log p, or with ``analytic_kl`` its
        closed form for N(loc, scale^2) against N(0, I)."""
        x = x.flatten(1)
        loc, raw = self.head(self.encoder(x)).chunk(2, dim=-1)
        scale = guides.MIN_SCALE + F.softplus(raw)
        z = loc + scale * torch.randn_like(loc)
        log_lik = -F.binary_cross_entropy_with_logits(self.decoder(z), x, reduction="none").sum(-1)
        if self.analytic_kl:
            return log_lik, (0.5 * (loc.pow(2) + scale.pow(2) - 1) - scale.log()).sum(-1)
        log_prior = (-0.5 * z.pow(2) - 0.5 * LOG_2PI).sum(-1)
        log_q = (-0.5 * ((z - loc) / scale).pow(2) - scale.log() - 0.5 * LOG_2PI).sum(-1)
        return log_lik, log_q - log_prior

    def forward(self, x: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        """Negative ELBO summed over the batch (``terms``), the KL weighted by ``beta``."""
        log_lik, kl = self.terms(x)
        return -(log_lik - beta * kl).sum()


def suite_pair(device):
    config = RunConfig(arch="mlp", hidden=HIDDEN, latent_dim=LATENT, activation="relu",
                       likelihood="bernoulli", guide="diag")
    return run.build(config, OBS_SHAPE).to(device)


def baseline_from(pair, analytic_kl: bool = False) -> PlainVAE:
    plain = PlainVAE(analytic_kl).to(next(pair.parameters()).device)
    plain.encoder.load_state_dict(pair.guide.encoder.state_dict())
    plain.head.load_state_dict(pair.guide.head.state_dict())
    plain.decoder.load_state_dict(pair.model.decoder.state_dict())
    return plain


class Contender:
    """One loss with its own parameters (``module``), its own optimizer and clocks. With ``x0`` the
    loss is primed as train.fit primes it (one validated call, compiling the JIT); with ``compile``
    it is compiled as ``--compile`` compiles it, its first step timed in ``compile_seconds``."""

    def __init__(self, name, module, loss, x0=None, beta=None, compile: bool = False):
        if x0 is not None:
            _prime(module, loss, x0, beta)
        self.compile_seconds = None
        if compile:
            loss, self.compile_seconds = _compiled(module, loss, (x0, beta))
        self.name, self.module, self.loss, self.count = name, module, loss, 0
        self.optimizer = run.make_optimizer(module, LR)  # the suite's optimizer for every contender alike

    def steps(self, batches, beta, n: int) -> None:
        for _ in range(n):
            x = batches[self.count % len(batches)]
            self.count += 1
            self.optimizer.zero_grad(set_to_none=True)
            value = self.loss(x, beta) / x.shape[0]
            value.backward()
            self.optimizer.step()


def contender(name, pair, x0, beta) -> Contender:
    if name in PLAIN:
        plain = baseline_from(pair, analytic_kl=name == "baseline-kl")
        return Contender(name, plain, plain, x0, beta, compile=name.endswith("-compiled"))
    module = copy.deepcopy(pair)
    if name == STOCK:
        loss = pyro.infer.Trace_ELBO(max_plate_nesting=1)(module.model, module.guide)
    else:
        objective = name.removesuffix("-traced").removesuffix("-compiled")
        loss = objectives.loss_fn(objective, module.model, module.guide, 1, direct=not name.endswith("-traced"))
    return Contender(name, module, loss, x0, beta, compile=name.endswith("-compiled"))


def random_batches(seed: int, device, count: int = 10) -> list:
    gen = torch.Generator().manual_seed(seed)
    # image-shaped, as the suite's models take observations (the same numbers as flat rows)
    return [torch.bernoulli(torch.rand(BATCH, *OBS_SHAPE, generator=gen), generator=gen).to(device)
            for _ in range(count)]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def check_agreement(pair, x, beta) -> dict:
    """Each suite contender's loss and gradients against its hand-written reference's on the same
    reparameterized sample: seeding alike gives the same z because the suite's guide and the
    baseline each draw one standard-normal tensor of the same size, in the same way."""

    def loss_and_grad(loss, parts):
        for part in parts:
            part.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        value = loss(x, beta)
        value.backward()
        return value.item(), torch.cat([p.grad.flatten() for part in parts for p in part.parameters()])

    out = {}
    with pyro.validation_enabled(True):
        for name in SUITE:
            suite = contender(name, pair, x, beta)
            plain = baseline_from(pair, analytic_kl=REFERENCE[name] == "baseline-kl")
            m = suite.module
            value, grad = loss_and_grad(suite.loss, [m.guide.encoder, m.guide.head, m.model.decoder])
            base, base_grad = loss_and_grad(plain, [plain.encoder, plain.head, plain.decoder])
            out[name] = {"reference": REFERENCE[name], "suite_loss": value, "baseline_loss": base,
                         "rel_diff": abs(value - base) / abs(base),
                         "grad_rel_diff": ((grad - base_grad).norm() / base_grad.norm()).item()}
    return out


def time_interleaved(contenders, batches, beta, device, repeats: int, steps: int, warmup: int) -> tuple[dict, float]:
    """Wall seconds per repeat for each contender, and the process CPU seconds per wall second."""
    wall = {c.name: [] for c in contenders}
    cpu = 0.0
    with pyro.validation_enabled(False):  # as in training: validated once when primed, not per step
        for c in contenders:
            c.steps(batches, beta, warmup)
        for _ in range(repeats):
            for c in contenders:
                wall[c.name].append(0.0)
            # short turns, so that other load on the machine hits every contender alike
            for done in range(0, steps, CHUNK):
                for c in contenders:
                    sync(device)
                    w, p = time.perf_counter(), time.process_time()
                    c.steps(batches, beta, min(CHUNK, steps - done))
                    sync(device)
                    wall[c.name][-1] += time.perf_counter() - w
                    cpu += time.process_time() - p
    # near torch's thread count on an idle machine; far below it, other processes took the cores
    return wall, cpu / sum(map(sum, wall.values()))


def benchmark(device, repeats: int, steps: int, warmup: int, seed: int) -> tuple[dict, dict, float]:
    pyro.set_rng_seed(seed)
    batches = random_batches(seed, device)
    beta = torch.ones((), device=device)
    pair = suite_pair(device)
    # the timed contenders first: a compiled one's compile_seconds is then its own compiling, not a
    # load from the inductor cache the agreement check's compiling of the same graph had just filled
    contenders = [contender(name, pair, batches[0], beta) for name in CONTENDERS]
    agreement = check_agreement(copy.deepcopy(pair), batches[0], beta * 0.5)
    wall, busy = time_interleaved(contenders, batches, beta, device, repeats, steps, warmup)
    results = {}
    for c in contenders:
        name, reference = c.name, REFERENCE[c.name]
        ratios = [t / b for t, b in zip(wall[name], wall["baseline"])]
        to_reference = [t / b for t, b in zip(wall[name], wall[reference])]
        results[name] = {"median_steps_per_s": statistics.median(steps / t for t in wall[name]),
                         "median_ratio_to_baseline": statistics.median(ratios), "reference": reference,
                         "median_ratio_to_reference": statistics.median(to_reference),
                         "compile_seconds": c.compile_seconds, "seconds_per_repeat": wall[name],
                         "ratios_per_repeat": ratios, "ratios_to_reference_per_repeat": to_reference}
    return results, agreement, busy


def cpu_model() -> str:
    info = Path("/proc/cpuinfo")  # platform.processor() is often empty on Linux
    names = [line.split(":", 1)[1].strip() for line in (info.read_text().splitlines() if info.exists() else [])
             if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def git(*args) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent.parent, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def facts(device, load_before: float, busy: float) -> dict:
    """Date, commit and machine of a run, the same in every benchmark's report."""
    tracked = git("status", "--porcelain", "--untracked-files=no")
    return {
        "device": device.type, "date": datetime.date.today().isoformat(),
        "git": {"commit": git("rev-parse", "HEAD"), "tracked_changes": None if tracked is None else bool(tracked)},
        "machine": {"platform": platform.platform(), "processor": cpu_model(), "cpu_count": os.cpu_count(),
                    "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                    "python": platform.python_version(), "torch": str(torch.__version__), "pyro": str(pyro.__version__),
                    "torch_threads": torch.get_num_threads(), "load_average_1min_before": round(load_before, 2),
                    "process_cpu_seconds_per_wall_second": round(busy, 2)},
    }


def finish_facts(device, load_before: float, busy: float, **extra) -> dict:
    """The end of a benchmark cell's line: when it finished, whether other processes competed for its
    cores (its process got under 75% of its threads' CPU time), ``extra``, then ``facts``."""
    return {"contended": device.type == "cpu" and busy < 0.75 * torch.get_num_threads(),
            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            **extra, **facts(device, load_before, busy)}


def caution_lines(report: dict) -> list[str]:
    m = report["machine"]
    if m["process_cpu_seconds_per_wall_second"] < 0.75 * m["torch_threads"] and report["device"] == "cpu":
        return ["", f"**Caution**: the benchmark got {m['process_cpu_seconds_per_wall_second']:.2f} CPU seconds per "
                f"second with {m['torch_threads']} torch threads, so other processes were competing for the cores; "
                "steps/s are then low and unsteady, and ratios less trustworthy. Rerun on an idle machine."]
    return []


def facts_lines(report: dict) -> list[str]:
    table = {**report["machine"], "date": report["date"], **report["git"]}
    return ["", "| machine and software | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in table.items()]


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = [f"# Training-step throughput ({report['device']}, {report['date']})", "",
             f"Batch {s['batch']}, MLP {s['network']}, {s['repeats']} repeats of {s['steps']} steps per contender "
             f"(interleaved in turns of {CHUNK} steps) after {s['warmup']} warm-up steps; one step = zero_grad, "
             "loss / batch, backward, Adam. A ratio is a contender's time over that of the hand-written step of "
             "the same mathematics (its reference: `baseline`, or `baseline-kl` for the closed-form KL) within a "
             "repeat; the median over repeats and their range. Compile: the seconds of a compiled contender's "
             "first step, apart from its timing.", "",
             "| contender | reference | median steps/s | ratio to reference | range over repeats "
             "| ratio to baseline | compile s |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for name, r in report["results"].items():
        low, high = min(r["ratios_to_reference_per_repeat"]), max(r["ratios_to_reference_per_repeat"])
        compiled = "" if r["compile_seconds"] is None else f"{r['compile_seconds']:.1f}"
        lines.append(f"| {name} | {r['reference']} | {r['median_steps_per_s']:.1f} "
                     f"| {r['median_ratio_to_reference']:.3f} | {low:.3f} - {high:.3f} "
                     f"| {r['median_ratio_to_baseline']:.3f} | {compiled} |")
    lines += ["", "Targets from the project's issue, ratios to the reference:"]
    for name, (op, target) in TARGETS.items():
        ratio = report["results"][name]["median_ratio_to_reference"]
        met = ratio <= target if op == "<=" else ratio < target
        lines.append(f"- {name}: {ratio:.3f}, target {op} {target:.2f}: {'met' if met else 'missed'}")
    lines += caution_lines(report)
    lines += ["", "Check, each suite contender against its reference on one shared z sample (negative ELBO "
              "summed over the batch):", ""]
    lines += [f"- {name} against {a['reference']}: loss {a['suite_loss']:.4f} vs {a['baseline_loss']:.4f} "
              f"(relative difference {a['rel_diff']:.1e}); gradients differ by {a['grad_rel_diff']:.1e} relative "
              "to their norm" for name, a in report["agreement"].items()]
    lines += facts_lines(report)
    return "\n".join(lines) + "\n"


def timing_arguments(parser, steps: int, warmup: int) -> None:
    """The flags every interleaved step-timing benchmark takes."""
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=steps, help="timed steps per contender per repeat")
    parser.add_argument("--warmup", type=int, default=warmup, help="untimed steps per contender first")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    timing_arguments(parser, steps=100, warmup=20)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.steps < 1 or args.warmup < 0 or (args.threads is not None and args.threads < 1):
        parser.error("--repeats, --steps and --threads must be positive, --warmup non-negative")
    try:
        device = run.resolve_device(args.device)
    except PyroVAEError as err:
        parser.error(str(err))

    load_before = os.getloadavg()[0]
    with tiers.torch_threads(args.threads):  # facts() inside: the report names the threads it ran with
        results, agreement, busy = benchmark(device, args.repeats, args.steps, args.warmup, args.seed)
        machine = facts(device, load_before, busy)
    report = {
        **machine,
        "settings": {"batch": BATCH, "network": "784-500-500-32", "guide": "diag", "likelihood": "bernoulli",
                     "optimizer": f"Adam(lr={LR})", "particles": 1, "repeats": args.repeats, "steps": args.steps,
                     "warmup": args.warmup, "seed": args.seed, "data": "bernoulli(uniform) noise, 10 batches"},
        "targets": {name: list(t) for name, t in TARGETS.items()}, "agreement": agreement, "results": results,
    }
    out = Path(args.out)
    write_text_atomic(out / f"throughput-{device.type}-{report['date']}.json", json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    write_text_atomic(out / f"throughput-{device.type}.md", text)

    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
