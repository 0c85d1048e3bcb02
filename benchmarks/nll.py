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
from dataclasses import dataclass
from pathlib import Path

import pyro
import torch

from pyro_vae.config import RunConfig
from pyro_vae.errors import PyroVAEError
from pyro_vae.evaluate import evaluate
from pyro_vae.io import write_text_atomic
from pyro_vae.models import MODELS
from pyro_vae.run import BEST, LAST, load_data, load_run, resolve_device
from pyro_vae.train import fit

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling modules, however this is run
import nll_table  # noqa: E402
import throughput  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Cell:
    """One trained and evaluated model: data, network, guide, objective and budget."""

    dataset: str
    binarize: str
    likelihood: str
    arch: str
    hidden: tuple
    activation: str
    latent_dim: int
    guide: str
    flows: int | None
    objective: str
    particles: int
    epochs: int
    batch_size: int
    lr: float
    iw_samples: int
    test_stride: int = 1  # evaluate on test[::stride]; binarized-mnist's test split is sorted by label
    warmup_epochs: int = 0
    patience: int | None = None  # None: no early stopping within the budget
    flow_hidden: tuple | None = None  # None: the guide builder's default
    seed: int = 0

    @property
    def id(self) -> str:
        data = self.dataset + ("" if self.binarize == "none" else f"-{self.binarize}")
        act = "" if self.activation == "relu" else f"-{self.activation}"
        net = f"{self.arch}{'-'.join(map(str, self.hidden))}{act}-z{self.latent_dim}"
        return f"{data}.{net}.{self.guide}{self.flows or ''}.{self.objective}{self.particles}"

    @property
    def anchors(self) -> list[str]:
        return nll_table.anchors_for(self)

    def config(self, data_dir, device: str, out: Path) -> RunConfig:
        options = {} if self.flows is None else {"flows": self.flows}
        if self.flow_hidden is not None:
            options["flow_hidden"] = list(self.flow_hidden)
        return RunConfig(dataset=self.dataset, data_dir=None if data_dir is None else str(data_dir),
                         binarize=self.binarize, likelihood=self.likelihood, arch=self.arch, hidden=list(self.hidden),
                         activation=self.activation, latent_dim=self.latent_dim, guide=self.guide,
                         guide_options=options, objective=self.objective, particles=self.particles,
                         warmup_epochs=self.warmup_epochs, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                         patience=self.patience or self.epochs, seed=self.seed, device=device, out=str(out))


# --- the grid: small tables, combined into TIERS below ---------------------------------------------

DATA = {  # key: (dataset, binarize, likelihood)
    "digits": ("digits", "dynamic", "bernoulli"),
    "static": ("binarized-mnist", "none", "bernoulli"),  # Larochelle-Murray, fixed binarization
    "dynamic": ("mnist", "dynamic", "bernoulli"),
    "frey": ("frey", "none", "gaussian"),
}
NETS = {  # key: (arch, hidden, activation, latent_dim, flow_hidden); decoders mirror the encoder
    "small": ("mlp", (128,), "relu", 8, (64,)),  # flow hypernetworks sized to the 128-unit trunk
    "rm": ("mlp", (400,), "relu", 40, None),  # 784-400-40, Rezende & Mohamed 2015
    "burda": ("mlp", (200, 200), "tanh", 50, None),  # 784-200-200-50 tanh, Burda et al. 2016 (one stochastic layer)
    "conv": ("conv", (256,), "relu", 32, None),  # two stride-2 convolutions (32, 64 channels) and a dense layer
    "frey": ("mlp", (200,), "tanh", 10, None),
}
# torch threads per tier unless --threads says otherwise (None: torch's default). On a shared 2-core
# machine spinning intra-op threads made steps 20-60x slower than one thread (measured: 410 against
# 6.6 ms for the smoke networks, 587 against 27 ms for 784-400-40); an idle one may gain from two.
THREADS = {"smoke": 1, "standard": 1, "paper": None}


@dataclass(frozen=True)
class Budget:
    epochs: int
    batch_size: int
    lr: float = 1e-3
    iw_samples: int = 5000
    test_stride: int = 1
    warmup_epochs: int = 0
    patience: int | None = None


BUDGETS = {
    # A few hundred steps per cell (1258 training digits: 9 steps of 128 per epoch). 500 importance
    # samples, not the 2000 of small sets in the other tiers, keep the tier within minutes.
    "smoke": {"digits": Budget(epochs=40, batch_size=128, iw_samples=500)},
    # About an hour for the costliest cell of each group on one CPU thread, estimated from measured
    # seconds per step (README, "Test NLL"); every cell of a group gets the same epochs, so
    # guides and objectives compare at equal budgets. 5000 importance samples on a strided test
    # subset bound the evaluation's share of that hour; Frey faces stop early.
    "standard": {
        "rm": Budget(epochs=100, batch_size=100, test_stride=5),
        "burda": Budget(epochs=25, batch_size=100, test_stride=5),
        "conv": Budget(epochs=40, batch_size=100, test_stride=20),
        "frey": Budget(epochs=1000, batch_size=100, iw_samples=2000, patience=100),
    },
    # Published budgets, for a GPU. Burda et al.: 3280 passes with batches of 20 (their learning
    # rate schedule is not reproduced: Adam at 1e-3 throughout). Rezende & Mohamed: 500,000 updates
    # of 100 images (1000 epochs of binarized MNIST) with the KL weight annealed over 10,000 updates.
    # Conv and Frey cells have no published figure of the same setting: long budgets with early stopping.
    "paper": {
        "burda": Budget(epochs=3280, batch_size=20),
        "rm": Budget(epochs=1000, batch_size=100, warmup_epochs=20),
        "conv": Budget(epochs=2000, batch_size=100, lr=5e-4, patience=100),
        "frey": Budget(epochs=2000, batch_size=100, lr=5e-4, iw_samples=2000, patience=100),
    },
}

# What each tier is for, printed above its table (the rows give epochs, test images and K).
ABOUT = {
    "smoke": "Every guide on scikit-learn's 8x8 digits: 40 epochs of 9 steps (batch 128, Adam 1e-3, one torch "
             "thread), NLL with 500 importance samples (the other tiers use 5000, and 2000 for small sets). It "
             "checks the pipeline; no published figure has this setting.",
    "standard": "MNIST-scale cells at about an hour each on one CPU thread: each network's cells share one epoch "
                "budget; 5000 importance samples on a strided test subset (2000 on all of Frey faces' test split).",
    "paper": "The published budgets, for a GPU; 5000 importance samples on the whole test split (2000 for Frey "
             "faces).",
}

GUIDES = [("diag", None), ("full", None), ("planar", 4), ("radial", 4), ("coupling", 4), ("iaf", 4)]
# rows: (data, net, guide, flows, objective, particles, budget)
ROWS = {
    "smoke": [("digits", "small", g, k, "elbo", 1, "digits") for g, k in GUIDES]
    + [("digits", "small", "diag", None, "iwae", 5, "digits")],
    "standard": [("static", "rm", g, k, "elbo", 1, "rm") for g, k in GUIDES]
    + [(data, "burda", "diag", None, obj, k, "burda") for data in ("static", "dynamic")
       for obj, k in (("elbo", 1), ("iwae", 5), ("iwae", 50))]
    + [("static", "conv", g, k, "elbo", 1, "conv") for g, k in (("diag", None), ("iaf", 4))]
    + [("frey", "frey", g, k, "elbo", 1, "frey") for g, k in (("diag", None), ("iaf", 4))],
    "paper": [("static", "rm", g, k, "elbo", 1, "rm") for g, k in GUIDES + [("planar", 80)]]
    + [("static", "burda", "diag", None, "iwae", 50, "burda")]
    + [("dynamic", "burda", "diag", None, obj, k, "burda") for obj in ("elbo", "iwae") for k in (1, 5, 50)]
    + [("static", "conv", g, k, "elbo", 1, "conv") for g, k in (("diag", None), ("iaf", 4))]
    + [("frey", "frey", g, k, "elbo", 1, "frey") for g, k in (("diag", None), ("planar", 4), ("iaf", 4))],
}


def make_cell(data, net, guide, flows, objective, particles, budget: Budget) -> Cell:
    dataset, binarize, likelihood = DATA[data]
    arch, hidden, activation, latent, flow_hidden = NETS[net]
    return Cell(dataset, binarize, likelihood, arch, hidden, activation, latent, guide, flows, objective, particles,
                flow_hidden=flow_hidden if flows else None, **dataclasses.asdict(budget))


TIERS: dict[str, list[Cell]] = {tier: [make_cell(*row[:-1], BUDGETS[tier][row[-1]]) for row in rows]
                                for tier, rows in ROWS.items()}
for _tier, _cells in TIERS.items():
    assert len({c.id for c in _cells}) == len(_cells), f"two cells of tier {_tier} share an id"


# --- results files ---------------------------------------------------------------------------------

def append_record(path: Path, record: dict) -> None:
    old = path.read_text() if path.is_file() else ""
    write_text_atomic(path, old + json.dumps(record) + "\n")


def write_markdown(results: Path, tier: str, device: str) -> Path:
    latest = {}
    for r in sorted(nll_table.read_records(results, tier, device), key=lambda r: r["finished"]):
        latest[r["id"]] = r
    declared = [c.id for c in TIERS[tier]]
    path = results / f"{tier}-{device}.md"
    text = nll_table.markdown(tier, device, [latest[i] for i in declared if i in latest],
                              [i for i in declared if i not in latest],
                              f"python benchmarks/nll.py --tier {tier} --device {device}", ABOUT.get(tier, ""))
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
        "epochs": len(history), "best_epoch": checkpoint.train_state.epoch, "steps": history[-1]["step"],
        "seconds_per_epoch": sum(seconds) / len(seconds), "train_seconds": trained - wall,
        "eval_seconds": done - trained, "wall_seconds": done - wall, "resumed": resumed,
        "peak_rss_mib": peak_rss_mib(), "peak_rss_delta_mib": peak_rss_mib() - rss_before,
        "cuda_peak_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        "parameters": {part: sum(p.numel() for p in getattr(checkpoint.pair, part).parameters())
                       for part in ("model", "guide")},
        "contended": device.type == "cpu" and busy < 0.75 * torch.get_num_threads(),
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **throughput.facts(device, load_before, busy),
    }
    if cell.likelihood == "gaussian" and cell.dataset == "frey":
        dim = data.obs_dim
        record.update(nll_bits_per_dim=nll_table.bits_per_dim(record["nll"], dim),
                      nll_bits_per_dim_se=nll_table.bits_se(record["nll_se"], dim),
                      neg_elbo_bits_per_dim=nll_table.bits_per_dim(record["neg_elbo"], dim),
                      bits_per_dim_convention=f"(nats + D ln {nll_table.FREY_LEVEL_SCALE}) / (D ln 2), D = {dim}")
    return record


# --- command line ----------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit 2, like the package's CLI
        raise PyroVAEError(message)


def parse(argv) -> argparse.Namespace:
    parser = _Parser(prog="nll.py", description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--tier", required=True, help=f"one of {', '.join(TIERS)}")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--only", type=lambda t: [s for s in t.split(",") if s],
                        help="run only cells whose id contains one of these comma-separated substrings")
    parser.add_argument("--force", action="store_true", help="retrain cells already in the results")
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--work", help="run directories (default runs/bench/<tier>)")
    parser.add_argument("--data-dir", help="default $PYRO_VAE_DATA, else ../shared/data beside the repository")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: the tier's, see THREADS)")
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        raise PyroVAEError(f"--threads must be a positive integer, got {args.threads}")
    if args.tier not in TIERS:
        raise PyroVAEError(f"unknown --tier {args.tier!r}; choose from {', '.join(TIERS)}")
    if args.only is not None and not args.only:
        raise PyroVAEError("--only needs at least one substring")
    return args


def run_tier(args) -> int:
    device = resolve_device(args.device)
    cells = [c for c in TIERS[args.tier] if not args.only or any(s in c.id for s in args.only)]
    if not cells:
        raise PyroVAEError(f"--only {','.join(args.only)} matches no cell of tier {args.tier}")
    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    if data_dir is not None and not data_dir.is_dir():
        raise PyroVAEError(f"--data-dir {data_dir} is not a folder")
    results = Path(args.results)
    work = Path(args.work or Path("runs") / "bench" / args.tier) / device.type
    done = {r["id"] for r in nll_table.read_records(results, args.tier, device.type)}
    threads, before = args.threads or THREADS.get(args.tier), torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        run_cells(cells, args, device, results, work, data_dir, done)
    finally:
        torch.set_num_threads(before)  # main() may run inside another program, e.g. the tests
    return 0


def run_cells(cells, args, device, results: Path, work: Path, data_dir, done: set) -> None:
    jsonl = results / f"{args.tier}-{device.type}-{datetime.date.today().isoformat()}.jsonl"
    started = time.perf_counter()
    for n, cell in enumerate(cells, 1):
        head = f"[{n}/{len(cells)}] {cell.id}"
        if cell.id in done and not args.force:
            print(f"{head}: in the results, skipped (--force retrains)", flush=True)
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
    try:
        return run_tier(parse(argv))
    except PyroVAEError as err:
        print(f"nll.py: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # an unwritable --results or --work, a full disk
        print(f"nll.py: error: {err.strerror or err}: {err.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
