"""Data-parallel training throughput: samples/s for 1 and N processes (CPU, gloo) or GPUs (NCCL).

Every contender runs the training step of ``train.fit`` on the network and data of throughput.py
(MLP 784-500-500-32, ``diag`` guide, the Monte-Carlo ``elbo`` named explicitly, Bernoulli pixels,
random binary MNIST-shaped batches of shape (B, 1, 28, 28)), with ``--batch`` rows per rank:
zero_grad, loss / batch, the per-step all-reduce of the loss that ``fit`` uses to stop every rank
alike on a NaN, backward (DistributedDataParallel averaging the gradients), Adam. ``single`` is the
one-process loop without DDP; ``ddp-N`` runs N processes started here with torchrun's environment,
through ``pyro_vae.distributed``. Each process uses one torch thread on CPU, so N processes on N
cores is a fair comparison with one process on one core.
Samples/s = world size x batch x steps / rank 0's wall time, median over repeats.

    python benchmarks/distributed.py [--device cpu|cuda] [--world-sizes 1,2] [--repeats N] [--steps N]
                                     [--warmup N] [--batch B] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import pyro
import torch
import torch.multiprocessing as mp

from pyro_vae import distributed, objectives, run
from pyro_vae.config import RunConfig
from pyro_vae.io import write_text_atomic

sys.path.insert(0, str(Path(__file__).resolve().parent))  # throughput.py beside this file, however run
import throughput as tp  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(ctx, batch: int, repeats: int, steps: int, warmup: int, seed: int) -> dict:
    """Wall and CPU seconds of each repeat of ``steps`` training steps on this rank."""
    torch.set_num_threads(1)
    device = ctx.device
    pyro.set_rng_seed(seed)  # the same initial parameters on every rank, as in fit
    config = RunConfig(arch="mlp", hidden=tp.HIDDEN, latent_dim=tp.LATENT, activation="relu", likelihood="bernoulli",
                       guide="diag")
    pair = run.build(config, tp.OBS_SHAPE).to(device)
    loss = ctx.wrap(objectives.loss_fn("elbo", pair.model, pair.guide, 1), "elbo")
    optimizer = run.make_optimizer(pair, tp.LR)
    gen = torch.Generator().manual_seed(seed + 1 + ctx.rank)  # each rank its own rows
    # image-shaped (batch, 1, 28, 28), as the suite's models take observations
    batches = [torch.bernoulli(torch.rand(batch, *tp.OBS_SHAPE, generator=gen), generator=gen).to(device)
               for _ in range(10)]
    beta = torch.ones((), device=device)

    def step(i: int) -> None:
        x = batches[i % len(batches)]
        optimizer.zero_grad(set_to_none=True)
        value = loss(x, beta) / x.shape[0]
        ctx.loss_sum(value, x.shape[0])
        value.backward()
        optimizer.step()

    with pyro.validation_enabled(False):
        for i in range(warmup):
            step(i)
        wall, cpu = [], []
        for _ in range(repeats):
            ctx.barrier()
            sync(device)
            w, c = time.perf_counter(), time.process_time()
            for i in range(steps):
                step(i)
            sync(device)
            ctx.barrier()  # the step of the slowest rank counts
            wall.append(time.perf_counter() - w)
            cpu.append(time.process_time() - c)
    return {"wall": wall, "cpu": cpu}


def _worker(rank: int, world_size: int, port: int, device_name: str, args: dict, result_file: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size)})
    with distributed.session(device_name, True) as ctx:
        timings = timed_steps(ctx, **args)
        gathered = [None] * world_size
        torch.distributed.all_gather_object(gathered, timings)
    if rank == 0:
        Path(result_file).write_text(json.dumps(gathered))
    # Skip interpreter finalization: torch occasionally aborted a rank during it (SIGABRT,
    # "terminate called without an active exception") after destroy_process_group, all work done.
    sys.stdout.flush()
    os._exit(0)


def measure(name: str, world_size: int, device_name: str, args: dict, workdir: Path) -> list[dict]:
    """Per rank, the wall and CPU seconds of each repeat."""
    if name == "single":
        return [timed_steps(distributed.Single(run.resolve_device(device_name)), **args)]
    result_file = workdir / f"{name}.json"
    mp.spawn(_worker, args=(world_size, free_port(), device_name, args, str(result_file)), nprocs=world_size)
    return json.loads(result_file.read_text())


def summary(rounds: list[list[dict]], world_size: int, args: dict) -> dict:
    samples = world_size * args["batch"] * args["steps"]
    wall = [w for ranks in rounds for w in ranks[0]["wall"]]
    rates = [samples / w for w in wall]
    busy = [sum(sum(ranks[r]["cpu"]) for ranks in rounds) / sum(sum(ranks[r]["wall"]) for ranks in rounds)
            for r in range(world_size)]
    return {"world_size": world_size, "median_samples_per_s": statistics.median(rates), "samples_per_s": rates,
            "median_steps_per_s": statistics.median(rates) / (world_size * args["batch"]),
            "cpu_seconds_per_wall_second_per_rank": busy, "wall_per_repeat": wall}


def markdown(report: dict) -> str:
    s, results = report["settings"], report["results"]
    base = results["ddp-1"]["median_samples_per_s"] if "ddp-1" in results else None
    backend = "NCCL, one GPU each" if report["device"] == "cuda" else "gloo"
    lines = [f"# Data-parallel training throughput ({report['device']}, {report['date']})", "",
             f"MLP {s['network']}, `diag` guide, `elbo`, batch {s['batch']} per rank (global batch = {s['batch']} x "
             f"world size), {s['repeats']} rounds of {s['steps']} steps after {s['warmup']} warm-up steps for each "
             "contender (one round = one repeat of every contender, started afresh, in turn), one torch "
             "thread per process; one step = zero_grad, loss / batch, all-reduce of the loss, backward (DDP averages "
             f"the gradients), Adam. `single` is one process without DDP; `ddp-N` is N processes ({backend}). "
             "Efficiency = samples/s / (N x samples/s of ddp-1).",
             "", "| contender | processes | median samples/s | median steps/s | efficiency | samples/s range | "
             "CPU s per wall s, per rank |", "|---|---:|---:|---:|---:|---:|---|"]
    for name, r in results.items():
        eff = f"{r['median_samples_per_s'] / (r['world_size'] * base):.2f}" if base and name != "single" else "-"
        busy = ", ".join(f"{b:.2f}" for b in r["cpu_seconds_per_wall_second_per_rank"])
        lines.append(f"| {name} | {r['world_size']} | {r['median_samples_per_s']:.0f} | {r['median_steps_per_s']:.1f} "
                     f"| {eff} | {min(r['samples_per_s']):.0f} - {max(r['samples_per_s']):.0f} | {busy} |")
    m = report["machine"]
    lines += ["", f"Load average (1 min) before the run: {m['load_average_1min_before']}, after it: "
              f"{m['load_average_1min_after']} (this includes the benchmark's own processes) on {m['cpu_count']} "
              "cores. CPU seconds per wall second below 1 come from other load, and for ranks of ddp-N also from "
              "waiting for each other in the all-reduce."]
    if report["device"] == "cpu" and m["load_average_1min_before"] > 0.5:
        lines += ["", "**Caution**: the machine was not idle when the run started (load average above 0.5), so "
                  "other processes may have competed for the cores; rates are then lower and less steady than on an "
                  "idle machine, the N-process rows most of all, since with N cores any other load takes a core "
                  "away from a rank."]
    lines += tp.facts_lines(report)
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--world-sizes", default="1,2", help="comma-separated process counts (GPUs: at most the count)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=150, help="timed steps per repeat")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch", type=int, default=tp.BATCH, help="rows per rank and step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    sizes = [int(v) for v in args.world_sizes.split(",") if v.strip()]
    if args.repeats < 1 or args.steps < 1 or args.warmup < 0 or args.batch < 1 or not sizes or min(sizes) < 1:
        parser.error("--repeats, --steps, --batch and every world size must be positive, --warmup non-negative")
    if args.device == "cuda" and (not torch.cuda.is_available() or max(sizes) > torch.cuda.device_count()):
        parser.error(f"--device cuda needs as many GPUs as the largest world size ({torch.cuda.device_count()} found)")

    torch.set_num_threads(1)
    step_args = {"batch": args.batch, "repeats": args.repeats, "steps": args.steps, "warmup": args.warmup,
                 "seed": args.seed}
    load_before = os.getloadavg()[0]
    out = Path(args.out)
    work = out / ".distributed-work"
    work.mkdir(parents=True, exist_ok=True)
    contenders = {"single": 1, **{f"ddp-{n}": n for n in sizes}}
    rounds = {name: [] for name in contenders}
    # one repeat of every contender per round, so that load changing over time hits them alike
    for r in range(args.repeats):
        for name, n in contenders.items():
            rounds[name].append(measure(name, n, args.device, {**step_args, "repeats": 1}, work))
            samples_per_s = n * args.batch * args.steps / rounds[name][-1][0]["wall"][0]
            print(f"round {r + 1}: {name} {samples_per_s:.0f} samples/s", flush=True)
    results = {name: summary(rounds[name], n, step_args) for name, n in contenders.items()}
    for f in work.iterdir():
        f.unlink()
    work.rmdir()
    busy = statistics.mean(statistics.mean(r["cpu_seconds_per_wall_second_per_rank"]) for r in results.values())
    report = {**tp.facts(torch.device(args.device), load_before, busy),
              "settings": {"network": "784-500-500-32", "guide": "diag", "objective": "elbo", **step_args,
                           "data": "bernoulli(uniform) noise, 10 batches per rank"},
              "results": results}
    report["machine"]["load_average_1min_after"] = round(os.getloadavg()[0], 2)
    write_text_atomic(out / f"distributed-{args.device}-{report['date']}.json", json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    write_text_atomic(out / f"distributed-{args.device}.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
