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
    """One trained and evaluated model: data, network, guide, objective and budget.

    ``latent_dim`` is an int for one stochastic layer, or a tuple of sizes for several (the one
    nearest x first), whose inter-layer MLPs ``layer_hidden`` sizes; ``inference`` and
    ``batch_norm`` are those of ``RunConfig``.
    """

    dataset: str
    binarize: str
    likelihood: str
    arch: str
    hidden: tuple
    activation: str
    latent_dim: int | tuple
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
    layer_hidden: tuple | None = None  # between latent layers; named for every hierarchical cell
    inference: str = "bottom-up"
    batch_norm: bool = False

    def __post_init__(self):
        # a hierarchical cell names its inter-layer widths, so that its id says what it trains
        # and a change of the package's default cannot change a cell under a fixed id
        several = isinstance(self.latent_dim, tuple) and len(self.latent_dim) > 1
        if several != (self.layer_hidden is not None):
            raise ValueError(f"layer_hidden goes with a tuple of two or more latent sizes: latent_dim "
                             f"{self.latent_dim!r}, layer_hidden {self.layer_hidden!r}")

    @property
    def latent_dims(self) -> tuple:
        return tuple(self.latent_dim) if isinstance(self.latent_dim, tuple) else (self.latent_dim,)

    @property
    def id(self) -> str:
        """``data.network.guide[K flows][.ladder].objective[k]``; the network reads
        ``arch<hidden>[-act]-z<sizes>[-lh<layer_hidden>][-bn]``, the latent sizes nearest x first."""
        data = self.dataset + ("" if self.binarize == "none" else f"-{self.binarize}")
        act = "" if self.activation == "relu" else f"-{self.activation}"
        net = f"{self.arch}{'-'.join(map(str, self.hidden))}{act}-z{'-'.join(map(str, self.latent_dims))}"
        if self.layer_hidden is not None:
            net += f"-lh{'-'.join(map(str, self.layer_hidden))}"
        if self.batch_norm:
            net += "-bn"
        inference = "" if self.inference == "bottom-up" else f".{self.inference}"
        return f"{data}.{net}.{self.guide}{self.flows or ''}{inference}.{self.objective}{self.particles}"

    @property
    def anchors(self) -> list[str]:
        return nll_table.anchors_for(self)

    def config(self, data_dir, device: str, out: Path) -> RunConfig:
        options = {} if self.flows is None else {"flows": self.flows}
        if self.flow_hidden is not None:
            options["flow_hidden"] = list(self.flow_hidden)
        dims = self.latent_dims
        return RunConfig(dataset=self.dataset, data_dir=None if data_dir is None else str(data_dir),
                         binarize=self.binarize, likelihood=self.likelihood, arch=self.arch, hidden=list(self.hidden),
                         activation=self.activation, latent_dim=dims[0] if len(dims) == 1 else list(dims),
                         layer_hidden=None if self.layer_hidden is None else list(self.layer_hidden),
                         inference=self.inference, batch_norm=self.batch_norm, guide=self.guide,
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
@dataclass(frozen=True)
class Net:
    """A network of the grid; decoders mirror the encoder. ``latent_dim``: an int, or a tuple of
    stochastic layer sizes nearest x first with ``layer_hidden`` between them."""

    arch: str
    hidden: tuple
    activation: str
    latent_dim: int | tuple
    flow_hidden: tuple | None = None
    layer_hidden: tuple | None = None
    inference: str = "bottom-up"
    batch_norm: bool = False


NETS = {
    "small": Net("mlp", (128,), "relu", 8, flow_hidden=(64,)),  # flow hypernetworks sized to the 128-unit trunk
    "rm": Net("mlp", (400,), "relu", 40),  # 784-400-40, Rezende & Mohamed 2015
    "burda": Net("mlp", (200, 200), "tanh", 50),  # 784-200-200-50 tanh, Burda et al. 2016 (one stochastic layer)
    "conv": Net("conv", (256,), "relu", 32),  # two stride-2 convolutions (32, 64 channels) and a dense layer
    "frey": Net("mlp", (200,), "tanh", 10),
    # Burda et al. 2016, two stochastic layers: 784-200-200-100(z1)-100-100-50(z2) tanh, bottom-up q
    "burda2": Net("mlp", (200, 200), "tanh", (100, 50), layer_hidden=(100, 100)),
    # the same widths with ladder inference and batch norm (Sonderby et al. 2016's training aids)
    "burda2-ladder": Net("mlp", (200, 200), "tanh", (100, 50), layer_hidden=(100, 100), inference="ladder",
                         batch_norm=True),
    # Sonderby et al. 2016's five-layer LVAE: 512-unit MLPs between x and z1, latent 64-32-16-8-4. The
    # paper's inter-layer MLPs narrow as 256, 128, 64, 32 units and use leaky ReLUs (slope 0.1); the
    # suite has one layer_hidden for all of them and no leaky ReLU, so: 160 units everywhere (the
    # uniform width with the paper's parameter count between latent layers, 504k against 496k)
    # and ReLU (see ABOUT["paper"]).
    "lvae": Net("mlp", (512, 512), "relu", (64, 32, 16, 8, 4), layer_hidden=(160, 160), inference="ladder",
                batch_norm=True),
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
        # the ladder cell of the same widths: the same budget, the KL weight warmed up over 5 epochs
        "burda-warmup": Budget(epochs=25, batch_size=100, test_stride=5, warmup_epochs=5),
        "conv": Budget(epochs=40, batch_size=100, test_stride=20),
        "frey": Budget(epochs=1000, batch_size=100, iw_samples=2000, patience=100),
    },
    # Published budgets, for a GPU. Burda et al.: 3280 passes with batches of 20 (their learning
    # rate schedule is not reproduced: Adam at 1e-3 throughout). Rezende & Mohamed: 500,000 updates
    # of 100 images (1000 epochs of binarized MNIST) with the KL weight annealed over 10,000 updates.
    # Sonderby et al. 2016 (LVAE): 2000 epochs, batches of 256, Adam at 1e-3, the KL weight warmed up
    # linearly over Nt = 200 epochs (their fine-tuning, 2000 more epochs with a decaying learning rate
    # and 10 samples, is not run). Conv and Frey cells have no published figure of the same setting:
    # long budgets with early stopping.
    "paper": {
        "burda": Budget(epochs=3280, batch_size=20),
        "lvae": Budget(epochs=2000, batch_size=256, warmup_epochs=200),
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
                "budget; 5000 importance samples on a strided test subset (2000 on all of Frey faces' test split). "
                "The `z100-50` cells are Burda et al.'s two-stochastic-layer network (784-200-200-z100-100-100-z50 "
                "tanh) with bottom-up inference, and with ladder inference, batch norm and the KL weight warmed "
                "up linearly over the first 5 of their 25 epochs (`.ladder`); all train the Monte-Carlo ELBO or "
                "the IWAE bound, named.",
    "paper": "The published budgets, for a GPU; 5000 importance samples on the whole test split (2000 for Frey "
             "faces). Burda et al.'s cells, one or two stochastic layers, train with Adam at 1e-3 throughout (the "
             "paper's learning-rate schedule over its 3280 passes is not reproduced). The five-layer ladder VAE "
             "(Sonderby et al. 2016: 2000 epochs, batch 256, Adam 1e-3, batch norm, warm-up over 200 epochs) "
             "differs from the paper where the suite cannot express it: one width, 160, for every MLP between "
             "latent layers where the paper narrows them as 256, 128, 64 and 32 units (160 gives those networks "
             "the paper's parameter count, 504k against 496k); ReLU for the paper's leaky ReLU (slope 0.1); the "
             "best epoch by validation ELBO on the suite's validation split where the paper trains on the whole "
             "training set; and no fine-tuning. Its published 81.74 is the paper's fine-tuned row (2000 more "
             "epochs with a decaying learning rate and 10 importance samples in training), so a gap to it is "
             "expected.",
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
    + [("frey", "frey", g, k, "elbo", 1, "frey") for g, k in (("diag", None), ("iaf", 4))]
    + [("dynamic", "burda2", "diag", None, obj, k, "burda") for obj, k in (("elbo", 1), ("iwae", 5))]
    + [("dynamic", "burda2-ladder", "diag", None, "elbo", 1, "burda-warmup")],
    "paper": [("static", "rm", g, k, "elbo", 1, "rm") for g, k in GUIDES + [("planar", 80)]]
    + [("static", "burda", "diag", None, "iwae", 50, "burda")]
    + [("dynamic", "burda", "diag", None, obj, k, "burda") for obj in ("elbo", "iwae") for k in (1, 5, 50)]
    + [("static", "conv", g, k, "elbo", 1, "conv") for g, k in (("diag", None), ("iaf", 4))]
    + [("frey", "frey", g, k, "elbo", 1, "frey") for g, k in (("diag", None), ("planar", 4), ("iaf", 4))]
    + [("dynamic", "burda2", "diag", None, obj, k, "burda") for obj in ("elbo", "iwae") for k in (1, 5, 50)]
    + [("dynamic", "lvae", "diag", None, "elbo", 1, "lvae")],
}


def make_cell(data, net, guide, flows, objective, particles, budget: Budget) -> Cell:
    dataset, binarize, likelihood = DATA[data]
    n = NETS[net]
    return Cell(dataset, binarize, likelihood, n.arch, n.hidden, n.activation, n.latent_dim, guide, flows, objective,
                particles, flow_hidden=n.flow_hidden if flows else None, layer_hidden=n.layer_hidden,
                inference=n.inference, batch_norm=n.batch_norm, **dataclasses.asdict(budget))


TIERS: dict[str, list[Cell]] = {tier: [make_cell(*row[:-1], BUDGETS[tier][row[-1]]) for row in rows]
                                for tier, rows in ROWS.items()}
for _tier, _cells in TIERS.items():
    assert len({c.id for c in _cells}) == len(_cells), f"two cells of tier {_tier} share an id"


# --- results files ---------------------------------------------------------------------------------

def append_record(path: Path, record: dict) -> None:
    old = path.read_text() if path.is_file() else ""
    write_text_atomic(path, old + json.dumps(record) + "\n")


def write_markdown(results: Path, tier: str, device: str) -> Path:
    latest = nll_table.latest(nll_table.read_records(results, tier, device))
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
    if cell.likelihood == "gaussian" and cell.dataset == "frey":
        dim = data.obs_dim
        record.update(nll_bits_per_dim=nll_table.bits_per_dim(record["nll"], dim),
                      nll_bits_per_dim_se=nll_table.bits_se(record["nll_se"], dim),
                      neg_elbo_bits_per_dim=nll_table.bits_per_dim(record["neg_elbo"], dim),
                      bits_per_dim_convention=f"(nats + D ln {nll_table.FREY_LEVEL_SCALE}) / (D ln 2), D = {dim}")
    return record


# --- command line ----------------------------------------------------------------------------------

def parse(argv) -> argparse.Namespace:
    parser = throughput.Parser(prog="nll.py", description=__doc__.splitlines()[0], allow_abbrev=False)
    throughput.tier_arguments(parser, TIERS, "retrain cells already in the results")
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "results"))
    throughput.work_arguments(parser, "run directories (default runs/bench/<tier>)",
                              "torch intra-op threads (default: the tier's, see THREADS)")
    return throughput.check_arguments(parser.parse_args(argv), TIERS)


def selected(cells, args) -> tuple[list, Path | None]:
    """The cells ``--only`` picks (none is a user error) and the data folder (``--data-dir``, else
    the default): flags of ``throughput.tier_arguments`` and ``throughput.work_arguments``."""
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
    with throughput.torch_threads(args.threads or THREADS.get(args.tier)):
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
    return throughput.cli("nll.py", parse, run_tier, argv)


if __name__ == "__main__":
    sys.exit(main())
