"""Test ELBO and importance-sampled NLL over a declared grid of datasets, networks, guides and objectives.

    python benchmarks/nll.py --tier smoke|standard|paper [--device cpu|cuda|auto] [--only TEXT[,TEXT]]
                             [--force] [--results DIR] [--work DIR] [--data-dir DIR]

Each cell of the tier trains with ``pyro_vae.train.fit`` into ``WORK/<device>/<cell id>`` (default
WORK: ``runs/bench/<tier>``) and is evaluated with ``pyro_vae.evaluate.evaluate`` on the test split
(best checkpoint by validation ELBO). One JSON line per finished cell is appended to
``RESULTS/<tier>-<device>-<date>.jsonl``; a cell already in any of that tier and device's files is
skipped unless ``--force``, so an interrupted tier resumes (an interrupted training continues from
its last epoch). ``RESULTS/<tier>-<device>.md`` is regenerated from all those lines, the latest per
cell, with the published figure of the same setting where ``nll_table.ANCHORS`` has one.
The cells and tiers are declared in ``nll_cells.py`` (their names are re-exported here).

Cells whose likelihood scores the 256 levels of 8-bit pixels (registry meta ``levels=256``:
``categorical``, ``dmol``, ``dlogistic``) also record both bounds in bits per dimension, exactly
nats / (D ln 2) (``pyro_vae.evaluate.bits_per_dim``). A cell whose data cannot be on every machine
(``NEEDS``: CIFAR-10) is skipped with its reason where the files are absent, and stays declared.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path

import pyro
import torch

from pyro_vae.config import RunConfig
from pyro_vae.errors import PyroVAEError
from pyro_vae.evaluate import bits_per_dim, evaluate
from pyro_vae.io import write_text_atomic
from pyro_vae.models import MODELS
from pyro_vae.run import BEST, LAST, load_data, load_run, resolve_device
from pyro_vae.train import fit

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling modules, however this is run
import nll_cells  # noqa: E402
import nll_table  # noqa: E402
import throughput  # noqa: E402  (machine and version facts)
import tiers  # noqa: E402  (the command line shared by the tier benchmarks)
from nll_cells import ABOUT, NEEDS, THREADS, TIERS, Cell  # noqa: E402  (the cells and tiers)

REPO = Path(__file__).resolve().parent.parent
# what tests/test_nll_bench.py declares cells of its own with, importable from here as before the split
Budget, Net, NETS, make_cell = nll_cells.Budget, nll_cells.Net, nll_cells.NETS, nll_cells.make_cell


# --- results files ---------------------------------------------------------------------------------

def append_record(path: Path, record: dict) -> None:
    old = path.read_text() if path.is_file() else ""
    write_text_atomic(path, old + json.dumps(record) + "\n")


def write_markdown(results: Path, tier: str, device: str) -> Path:
    latest = nll_table.latest(nll_table.read_records(results, tier, device))
    declared = [c.id for c in TIERS[tier]]
    path = results / f"{tier}-{device}.md"
    needs = {c.id: NEEDS[c.dataset][0] for c in TIERS[tier] if c.dataset in NEEDS and c.id not in latest}
    text = nll_table.markdown(tier, device, [latest[i] for i in declared if i in latest],
                              [i for i in declared if i not in latest],
                              f"python benchmarks/nll.py --tier {tier} --device {device}", ABOUT.get(tier, ""),
                              needs=needs)
    write_text_atomic(path, text)
    return path


# --- running one cell ------------------------------------------------------------------------------

def default_data_dir() -> Path | None:
    if os.environ.get("PYRO_VAE_DATA"):
        return Path(os.environ["PYRO_VAE_DATA"])
    shared = REPO.parent / "shared" / "data"
    return shared if shared.is_dir() else None


def writable(folder: Path) -> bool:
    """Whether files may be written in ``folder``: allowed for this process and not marked read-only
    (no write bit), since root passes ``os.access`` even in a folder shared read-only."""
    return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o222)


def mnist_root(data_dir: Path | None, work: Path) -> Path | None:
    """A data folder where torchvision can read MNIST: ``data_dir`` itself, or a copy of its
    ``MNIST/raw/*.gz`` under ``work`` when they are not extracted and the folder is read-only."""
    if data_dir is None:
        return None
    raw = data_dir / "MNIST" / "raw"
    gz = sorted(raw.glob("*.gz"))
    if not gz or writable(raw) or all(p.with_suffix("").is_file() for p in gz):
        return data_dir
    target = work / "data" / "MNIST" / "raw"
    target.mkdir(parents=True, exist_ok=True)
    for p in gz:
        if not (target / p.name).is_file():
            shutil.copy(p, target / p.name)
    return work / "data"


def _comparable(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in ("out", "data_dir", "device", "download")}


def prepare(run_dir: Path, config: RunConfig) -> bool:
    """Whether to resume: True for an interrupted run of this very cell; a run of another setting
    (the grid changed) is removed and trained afresh."""
    if not run_dir.exists():
        return False
    saved = run_dir / "config.json"
    if (run_dir / LAST).is_file() and saved.is_file():
        try:  # through RunConfig, so that fields added since the run was saved take their defaults
            same = _comparable(RunConfig.load(saved).to_dict()) == _comparable(config.to_dict())
        except PyroVAEError:
            same = False
        if same:
            return True
    remove(run_dir, "a run of another setting")
    return False


def remove(run_dir: Path, why: str) -> None:
    print(f"  removing {run_dir} ({why})", flush=True)
    shutil.rmtree(run_dir)


def peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def run_cell(cell: Cell, tier: str, device: torch.device, work: Path, data_dir: Path | None) -> dict:
    run_dir = work / cell.id
    if cell.dataset == "mnist":
        data_dir = mnist_root(data_dir, work)
    config = cell.config(data_dir, device.type, run_dir)
    resumed = prepare(run_dir, config)
    if resumed:
        print(f"  continuing the interrupted run in {run_dir}", flush=True)
    load_before, rss_before = os.getloadavg()[0], peak_rss_mib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fit(config, resume=resumed, progress=False)
    trained = time.perf_counter()

    checkpoint = load_run(run_dir, device, BEST)
    data = load_data(checkpoint.config)
    # the test images as the model scores them (data.x holds them as stored, uint8); labels only
    # for a model conditioned on them
    x = data.observations("test", device)[:: cell.test_stride]
    y = data.labels("test", device) if MODELS[checkpoint.config.model].conditional else None
    y = None if y is None else y[:: cell.test_stride]
    pyro.set_rng_seed(cell.seed)
    result = evaluate(checkpoint.pair.model, checkpoint.pair.guide, x, y, iw_samples=cell.iw_samples)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    done = time.perf_counter()
    busy = (time.process_time() - cpu) / (done - wall)

    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    seconds = [h["seconds"] for h in history]
    record = {
        "id": cell.id, "tier": tier, "cell": dataclasses.asdict(cell), "anchors": cell.anchors,
        "run": cell.id, "test": {"split": "test", "n": result["n"], "stride": cell.test_stride},
        "neg_elbo": -result["elbo"], "neg_elbo_se": result["elbo_se"], "recon": result["recon"], "kl": result["kl"],
        "nll": result["nll"], "nll_se": result["nll_se"], "iw_samples": result["iw_samples"],
        "active_units": result["active_units"], "latent_dim": result["latent_dim"],
        # per sample site ("z" for one layer, "z1" ... "zL" nearest x first for several)
        "active_units_per_site": result["active_units_per_site"], "latent_dims_per_site": result["latent_dims"],
        "kl_per_site": result["kl_per_site"],
        "epochs": len(history), "best_epoch": checkpoint.train_state.epoch, "steps": history[-1]["step"],
        "seconds_per_epoch": sum(seconds) / len(seconds), "train_seconds": trained - wall,
        "eval_seconds": done - trained, "wall_seconds": done - wall, "resumed": resumed,
        "peak_rss_mib": peak_rss_mib(), "peak_rss_delta_mib": peak_rss_mib() - rss_before,
        "cuda_peak_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        # total: each parameter once (a ladder guide shares the model's generative networks)
        "parameters": {**{part: sum(p.numel() for p in getattr(checkpoint.pair, part).parameters())
                          for part in ("model", "guide")},
                       "total": sum(p.numel() for p in checkpoint.pair.parameters())},
        **throughput.finish_facts(device, load_before, busy),
    }
    record.update(bits_fields(cell, result, data.obs_dim))
    return record


def bits_fields(cell: Cell, result: dict, dim: int) -> dict:
    """The bits/dim of a result line: exact, nats / (D ln 2), for a likelihood over the 256 levels
    of 8-bit pixels; the bin-width conversion for Frey faces' Gaussian cells; none for the others."""
    if cell.levels == 256:
        bits = bits_per_dim(result, dim)
        return {"neg_elbo_bits_per_dim": bits["elbo_bits_per_dim"],
                "neg_elbo_bits_per_dim_se": bits["elbo_bits_per_dim_se"],
                "nll_bits_per_dim": bits["nll_bits_per_dim"], "nll_bits_per_dim_se": bits["nll_bits_per_dim_se"],
                "likelihood_levels": 256, "dims": dim,
                "bits_per_dim_convention": f"nats / (D ln 2), D = {dim}: probabilities of the 256 levels"}
    if cell.likelihood == "gaussian" and cell.dataset == "frey":
        return {"nll_bits_per_dim": nll_table.bits_per_dim(result["nll"], dim),
                "nll_bits_per_dim_se": nll_table.bits_se(result["nll_se"], dim),
                "neg_elbo_bits_per_dim": nll_table.bits_per_dim(-result["elbo"], dim),
                "neg_elbo_bits_per_dim_se": nll_table.bits_se(result["elbo_se"], dim), "dims": dim,
                "bits_per_dim_convention": f"(nats + D ln {nll_table.FREY_LEVEL_SCALE}) / (D ln 2), D = {dim}"}
    return {}


def missing_data(cell: Cell, data_dir: Path | None) -> str | None:
    """Why ``cell`` cannot run here, for a dataset of ``NEEDS`` whose files are absent; else None."""
    if cell.dataset not in NEEDS:
        return None
    needs, absent = NEEDS[cell.dataset]
    if data_dir is None:
        return f"no data folder (pass --data-dir or set PYRO_VAE_DATA); the cell needs {needs}"
    missing = absent(data_dir)
    if missing:
        shown = ", ".join(str(p.relative_to(data_dir)) for p in missing[:3]) + (" ..." if len(missing) > 3 else "")
        return f"{cell.dataset} not found under {data_dir} (no {shown}); the cell needs {needs}"
    return None


# --- command line ----------------------------------------------------------------------------------

def parse(argv) -> argparse.Namespace:
    parser = tiers.Parser(prog="nll.py", description=__doc__.splitlines()[0], allow_abbrev=False)
    tiers.tier_arguments(parser, TIERS, "retrain cells already in the results")
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "results"))
    tiers.work_arguments(parser, "run directories (default runs/bench/<tier>)",
                              "torch intra-op threads (default: the tier's, see THREADS)")
    return tiers.check_arguments(parser.parse_args(argv), TIERS)


def selected(cells, args) -> tuple[list, Path | None]:
    """The cells ``--only`` picks (none is a user error) and the data folder (``--data-dir``, else
    the default): flags of ``tiers.tier_arguments`` and ``tiers.work_arguments``."""
    cells = [c for c in cells if not args.only or any(s in c.id for s in args.only)]
    if not cells:
        raise PyroVAEError(f"--only {','.join(args.only)} matches no cell of tier {args.tier}")
    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    if data_dir is not None and not data_dir.is_dir():
        raise PyroVAEError(f"--data-dir {data_dir} is not a folder")
    return cells, data_dir


def run_tier(args) -> int:
    device = resolve_device(args.device)
    cells, data_dir = selected(TIERS[args.tier], args)
    results = Path(args.results)
    work = Path(args.work or Path("runs") / "bench" / args.tier) / device.type
    done = {r["id"] for r in nll_table.read_records(results, args.tier, device.type)}
    with tiers.torch_threads(args.threads or THREADS.get(args.tier)):
        run_cells(cells, args, device, results, work, data_dir, done)
    return 0


def run_cells(cells, args, device, results: Path, work: Path, data_dir, done: set) -> None:
    jsonl = results / f"{args.tier}-{device.type}-{datetime.date.today().isoformat()}.jsonl"
    started = time.perf_counter()
    for n, cell in enumerate(cells, 1):
        head = f"[{n}/{len(cells)}] {cell.id}"
        if cell.id in done and not args.force:
            print(f"{head}: in the results, skipped (--force retrains)", flush=True)
            continue
        why = missing_data(cell, data_dir)
        if why:  # declared for another machine: the tier goes on, and the cell stays declared
            print(f"{head}: skipped, {why}", flush=True)
            continue
        if args.force and (work / cell.id).exists():
            remove(work / cell.id, "--force")
        print(f"{head}: training {cell.epochs} epochs ...", flush=True)
        record = run_cell(cell, args.tier, device, work, data_dir)
        append_record(jsonl, record)
        write_markdown(results, args.tier, device.type)
        print(f"{head}: -ELBO {record['neg_elbo']:.2f}, NLL {record['nll']:.2f} ± {record['nll_se']:.2f} "
              f"(K={record['iw_samples']}), {record['epochs']} epochs, {record['wall_seconds']:.0f} s", flush=True)
    path = write_markdown(results, args.tier, device.type)
    print(f"wrote {path} ({time.perf_counter() - started:.0f} s)")


def main(argv=None) -> int:
    return tiers.cli("nll.py", parse, run_tier, argv)


if __name__ == "__main__":
    sys.exit(main())
