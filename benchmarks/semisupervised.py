"""Semi-supervised MNIST: test classification error of M2 and M1+M2 (Kingma et al. 2014) by number of labels.

    python benchmarks/semisupervised.py --tier smoke|cpu|paper [--device cpu|cuda|auto] [--only TEXT[,TEXT]]
                                        [--force] [--list] [--out DIR] [--work DIR] [--data-dir DIR]
                                        [--threads N]

The data are the suite's MNIST split (50,000 train / 10,000 valid / 10,000 test, dynamically
binarized); ``--labelled N`` class-balanced training images keep their labels, the rest are
unlabelled. Two models, as in Kingma, Rezende, Mohamed & Welling 2014 (arXiv:1406.5298), Table 1:

- ``m2``: ``--model m2`` on the pixels: p(y) p(z) p(x|y, z), guide q(y|x) q(z|x, y), trained on
  J_alpha = sum_l L(x, y) + sum_u U(x) + alpha * E_l[log q(y|x)] (``pyro_vae.semisupervised``);
- ``m1m2``: an M1 VAE trained on the pixels (one per tier and device, shared by every label count
  and seed), its posterior means E_q[z|x] of all three splits written as a dataset with
  ``pyro_vae.encode.encode`` (the splits kept), the near-constant code dimensions dropped as
  Kingma's code does, then M2 trained on the codes with the Gaussian likelihood.

The ``kingma`` family has the paper's networks and objective (softplus MLPs, z = 50, alpha =
0.1 N_train); the ``pyro`` family has the settings of Pyro's example ``examples/vae/ss_vae_M2.py``
(3000 labels, 50 epochs, batch 200, Adam 4.2e-4, auxiliary-loss multiplier 46, translated to
alpha = 46 * N_labelled: see ``semisupervised_table.PYRO_AUX_MULTIPLIER``). The ``paper`` tier
declares the published budgets (thousands of epochs: for a GPU); ``cpu`` runs the same networks
with a few epochs, small enough for a 2-core machine in about ten minutes; ``smoke`` checks the
pipeline on the bundled 8x8 digits in seconds. ``semisupervised_table`` holds the published
figures, reads the results files and writes the markdown.

Each cell trains with ``pyro_vae.train.fit`` into ``WORK/<device>/<cell id>`` (default WORK
``runs/bench/semisupervised-<tier>``); the best epoch by validation ELBO (the suite's rule: the
validation labels are never used to pick a model) is scored on the test split: classification
error of argmax q(y|x) on every test image, and the bounds of ``pyro_vae.evaluate.evaluate`` (ELBO
and the K-sample NLL, the label summed out) on a strided test subset. One JSON line per finished
cell (and one for the tier's M1) is appended to ``OUT/<name>-<date>.jsonl`` with the machine,
versions and date; a cell already there is skipped unless ``--force``. ``OUT/<name>.md`` is
regenerated from those lines, the latest per cell: <name> is ``semisupervised-cpu`` for the cpu tier
on a CPU, ``semisupervised-<tier>-<device>`` otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyro
import torch

from pyro_vae import encode as encode_mod
from pyro_vae.config import RunConfig
from pyro_vae.data import SPLITS
from pyro_vae.errors import PyroVAEError
from pyro_vae.evaluate import evaluate
from pyro_vae.run import BEST, LAST, load_data, load_run, resolve_device
from pyro_vae.semisupervised import classification_error
from pyro_vae.train import fit

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling modules, however this is run
import nll  # noqa: E402  (data folders, run-directory reuse, --only and --data-dir)
import semisupervised_table as table  # noqa: E402  (published figures, results files, the markdown)
import throughput  # noqa: E402  (machine and version facts)
import tiers  # noqa: E402  (the command line shared by the tier benchmarks)

REPO = Path(__file__).resolve().parent.parent
LABEL_COUNTS = (100, 600, 1000, 3000)


@dataclass(frozen=True)
class Stage:
    """What the M1 and the cells share: an MLP with a diagonal Gaussian guide (``seed`` and
    ``objective`` are the subclasses'), its budget, and its test bounds (``iw_samples`` importance
    samples on ``test[::test_stride]``). These fields come first in a subclass's arguments."""

    hidden: tuple
    activation: str
    latent_dim: int
    epochs: int
    batch_size: int
    lr: float
    iw_samples: int
    test_stride: int

    def run_config(self, data_dir, device: str, out: Path, **fields) -> RunConfig:
        """Trained for the whole budget (no early stopping); ``fields``: data, likelihood and model."""
        return RunConfig(data_dir=None if data_dir is None else str(data_dir), arch="mlp", hidden=list(self.hidden),
                         activation=self.activation, latent_dim=self.latent_dim, guide="diag",
                         objective=self.objective, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                         patience=self.epochs, seed=self.seed, device=device, out=str(out), **fields)


@dataclass(frozen=True)
class M1(Stage):
    """The first stage of M1+M2: a VAE on the pixels, shared by a tier's M1+M2 cells."""

    dataset: str
    binarize: str
    keep_sd: float | None = 0.1  # drop code dimensions whose posterior mean varies less (Kingma's code)
    seed: int = 0
    objective: str = "meanfield"

    @property
    def id(self) -> str:
        act = "" if self.activation == "relu" else f"-{self.activation}"
        return f"m1.{self.dataset}-{self.binarize}.mlp{'-'.join(map(str, self.hidden))}{act}-z{self.latent_dim}"

    def config(self, data_dir, device: str, out: Path) -> RunConfig:
        return self.run_config(data_dir, device, out, dataset=self.dataset, binarize=self.binarize,
                               likelihood="bernoulli", model="vae")


@dataclass(frozen=True)
class Cell(Stage):
    """One semi-supervised run: family (``kingma`` or ``pyro``), model (``m2`` on pixels or
    ``m1m2`` on the tier's M1 codes), labels and seed, after the networks and budget of ``Stage``."""

    family: str
    model: str
    labelled: int
    seed: int
    labelled_share: float
    alpha: float | None  # None: the suite's default, 0.1 N_train (Kingma et al.)
    dataset: str = "mnist"
    binarize: str = "dynamic"
    objective: str = "meanfield"  # of the labelled rows (y observed); the unlabelled ones: TraceEnum_ELBO

    @property
    def id(self) -> str:
        return f"{self.family}.{self.model}.n{self.labelled}.s{self.seed}"

    @property
    def group(self) -> tuple:
        return self.family, self.model, self.labelled

    def config(self, data_dir, device: str, out: Path, codes: Path | None = None) -> RunConfig:
        pixels = self.model == "m2"
        return self.run_config(data_dir, device, out, dataset=self.dataset if pixels else str(Path(codes).resolve()),
                               binarize=self.binarize if pixels else "none",
                               likelihood="bernoulli" if pixels else "gaussian", model="m2", labelled=self.labelled,
                               alpha=self.alpha, labelled_share=self.labelled_share)


@dataclass(frozen=True)
class Tier:
    about: str  # printed above its tables: semisupervised_table.ABOUT
    m1: M1 | None
    cells: tuple
    threads: int | None  # torch intra-op threads unless --threads says otherwise (None: torch's)


def _kingma_batch(labelled: int, n_train: int = 50000) -> tuple[int, float]:
    """Kingma's code (learn_yz_x_ss.py, run_2layer_ssl.py): the training set in 200 minibatches (100
    for 100 labels), each with the same share of labelled rows: batch 250 (500), share N_l / N."""
    batch = n_train // (100 if labelled == 100 else 200)
    return batch, labelled / n_train


def _kingma(labelled, seed, epochs: tuple, batch, lr, share, iw_samples, test_stride) -> list[Cell]:
    """Kingma et al.'s M2 on the pixels and on the M1 codes, ``epochs`` each: 500 softplus units and
    z = 50 (run_2layer_ssl.py: 300 units on the codes with 100 labels), alpha 0.1 N_train."""
    return [Cell(hidden, "softplus", 50, n, batch, lr, iw_samples, test_stride, "kingma", model, labelled, seed, share,
                 None) for model, hidden, n in (("m2", (500,), epochs[0]),
                                                ("m1m2", (300,) if labelled == 100 else (500,), epochs[1]))]


def _pyro(seed, epochs, iw_samples, test_stride) -> Cell:
    """Pyro's example's defaults: 500 softplus units, z = 50, batch 200, Adam 4.2e-4, 3000 labels;
    its labelled batches are 15 of 250 per epoch, a share of 0.06."""
    return Cell((500,), "softplus", 50, epochs, 200, 4.2e-4, iw_samples, test_stride, "pyro", "m2", 3000, seed,
                3000 / 50000, table.pyro_alpha(3000))


def _kingma_m1(epochs, batch, lr, iw_samples, test_stride) -> M1:
    """Kingma et al.'s M1 for MNIST: 784-600-600-50 softplus."""
    return M1((600, 600), "softplus", 50, epochs, batch, lr, iw_samples, test_stride, "mnist", "dynamic")


def _paper() -> Tier:
    cells = []
    for labelled in LABEL_COUNTS:
        batch, share = _kingma_batch(labelled)
        cells += [c for seed in range(3) for c in _kingma(labelled, seed, (3000, 3000), batch, 3e-4, share, 5000, 1)]
    cells += [_pyro(seed, 50, 5000, 1) for seed in range(3)]
    m1 = _kingma_m1(3000, 1000, 3e-4, 5000, 1)
    return Tier(table.ABOUT["paper"], m1, tuple(cells), None)


def _cpu() -> Tier:
    cells = [c for labelled in (100, 1000) for c in _kingma(labelled, 0, (3, 8), 500, 1e-3, 0.1, 100, 10)]
    cells.append(_pyro(0, 2, 100, 10))
    m1 = _kingma_m1(5, 500, 1e-3, 100, 10)
    return Tier(table.ABOUT["cpu"], m1, tuple(cells), 1)


def _smoke() -> Tier:
    cells = [Cell((64,), "softplus", 8, 10, 128, 1e-3, 50, 1, "kingma", model, 50, 0, 0.25, None, dataset="digits")
             for model in ("m2", "m1m2")]
    m1 = M1((64,), "softplus", 8, epochs=50, batch_size=128, lr=1e-3, iw_samples=50, test_stride=1, dataset="digits",
            binarize="dynamic", keep_sd=None)
    return Tier(table.ABOUT["smoke"], m1, tuple(cells), 1)


TIERS = {"smoke": _smoke(), "cpu": _cpu(), "paper": _paper()}
for _name, _tier in TIERS.items():
    assert len({c.id for c in _tier.cells}) == len(_tier.cells), f"two cells of tier {_name} share an id"


# --- running ------------------------------------------------------------------------------------------

def _history(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _train(config: RunConfig, run_dir: Path) -> tuple[bool, float]:
    """Train ``config`` into ``run_dir`` (continuing an interrupted run of the same setting); the
    wall seconds it took and whether it resumed."""
    resumed = nll.prepare(run_dir, config)
    if resumed:
        print(f"  continuing the interrupted run in {run_dir}", flush=True)
    started = time.perf_counter()
    fit(config, resume=resumed, progress=False)
    return resumed, time.perf_counter() - started


def _bounds(checkpoint, x: torch.Tensor, iw_samples: int, seed: int) -> dict:
    pyro.set_rng_seed(seed)
    r = evaluate(checkpoint.pair.model, checkpoint.pair.guide, x, None, iw_samples=iw_samples)
    return {"neg_elbo": -r["elbo"], "neg_elbo_se": r["elbo_se"], "recon": r["recon"], "kl": r["kl"],
            "kl_per_site": r["kl_per_site"], "nll": r["nll"], "nll_se": r["nll_se"], "iw_samples": r["iw_samples"],
            "active_units": r["active_units"], "latent_dim": r["latent_dim"], "n": r["n"]}


def _facts(device, load_before: float, cpu_before: float, wall_before: float) -> dict:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    busy = (time.process_time() - cpu_before) / max(1e-9, time.perf_counter() - wall_before)
    return throughput.finish_facts(device, load_before, busy, peak_rss_mib=nll.peak_rss_mib())


def keep_dimensions(arrays: dict, keep_sd: float | None) -> tuple[dict, list[int], list[float]]:
    """Kingma's code keeps the code dimensions whose posterior mean has a standard deviation above
    0.1 over (unlabelled) training images; here over the whole training split."""
    sd = arrays["x"][arrays["split"] == "train"].std(0)
    kept = list(range(sd.shape[0])) if keep_sd is None else [int(i) for i in np.flatnonzero(sd > keep_sd)]
    if not kept:
        raise PyroVAEError(f"no code dimension of the M1 varies by more than {keep_sd}; train the M1 longer")
    out = dict(arrays)
    out["x"] = np.ascontiguousarray(arrays["x"][:, kept])
    out["site_sizes"] = np.array([len(kept)], dtype=np.int64)
    return out, kept, [float(s) for s in sd]


def run_m1(m1: M1, tier: str, device, work: Path, data_dir, results: Path, jsonl: Path, force: bool) -> Path:
    """The tier's M1, trained (or reused), evaluated and encoded once; returns the codes file."""
    run_dir, codes = work / m1.id, work / m1.id / "codes.npz"
    if m1.dataset == "mnist":
        data_dir = nll.mnist_root(data_dir, work)
    config = m1.config(data_dir, device.type, run_dir)
    known = table.latest(table.read_records(results, tier, device.type)).get(m1.id)
    history = _history(run_dir)
    same = (run_dir / BEST).is_file() and (run_dir / "config.json").is_file() and \
        nll._comparable(RunConfig.load(run_dir / "config.json").to_dict()) == nll._comparable(config.to_dict())
    if not force and same and len(history) >= m1.epochs and codes.is_file() and known is not None:
        print(f"[M1] {m1.id}: trained, encoded and in the results: reused", flush=True)
        return codes
    if force and run_dir.exists():
        nll.remove(run_dir, "--force")
    print(f"[M1] {m1.id}: training {m1.epochs} epochs ...", flush=True)
    load_before, cpu0, wall0 = os.getloadavg()[0], time.process_time(), time.perf_counter()
    resumed, train_seconds = _train(config, run_dir)
    checkpoint = load_run(run_dir, device, BEST)
    data = load_data(checkpoint.config)
    t = time.perf_counter()
    x_test = data.observations("test", device)[:: m1.test_stride]
    bounds = _bounds(checkpoint, x_test, m1.iw_samples, m1.seed)
    eval_seconds = time.perf_counter() - t
    t = time.perf_counter()
    pyro.set_rng_seed(m1.seed)
    arrays = encode_mod.encode(checkpoint.pair, data, checkpoint.config, SPLITS, "mean", device)
    arrays, kept, sd = keep_dimensions(arrays, m1.keep_sd)
    encode_mod.write(codes, arrays)
    encode_seconds = time.perf_counter() - t
    history = _history(run_dir)
    seconds = [h["seconds"] for h in history]
    record = {"id": m1.id, "kind": "m1", "tier": tier, "m1": dataclasses.asdict(m1),
              "test": {"split": "test", "n": bounds["n"], "stride": m1.test_stride}, **bounds,
              "epochs": len(history), "best_epoch": checkpoint.train_state.epoch,
              "seconds_per_epoch": sum(seconds) / len(seconds), "train_seconds": train_seconds,
              "eval_seconds": eval_seconds, "encode_seconds": encode_seconds, "resumed": resumed,
              "codes": {"path": str(codes), "what": "mean", "rows": int(arrays["x"].shape[0]),
                        "dims_kept": len(kept), "dims": m1.latent_dim, "kept": kept, "keep_sd": m1.keep_sd,
                        "sd_of_mean_per_dim": sd},
              "parameters": sum(p.numel() for p in checkpoint.pair.parameters()),
              **_facts(device, load_before, cpu0, wall0)}
    nll.append_record(jsonl, record)
    print(f"[M1] {m1.id}: -ELBO {record['neg_elbo']:.2f}, NLL {record['nll']:.2f} ± {record['nll_se']:.2f} "
          f"(K={record['iw_samples']}), {len(kept)}/{m1.latent_dim} code dimensions kept, "
          f"{record['seconds_per_epoch']:.1f} s/epoch", flush=True)
    return codes


def run_cell(cell: Cell, tier: str, device, work: Path, data_dir, codes: Path | None) -> dict:
    run_dir = work / cell.id
    if cell.model == "m2" and cell.dataset == "mnist":
        data_dir = nll.mnist_root(data_dir, work)
    config = cell.config(data_dir, device.type, run_dir, codes)
    load_before, cpu0, wall0 = os.getloadavg()[0], time.process_time(), time.perf_counter()
    resumed, train_seconds = _train(config, run_dir)
    t = time.perf_counter()
    checkpoint = load_run(run_dir, device, BEST)
    data = load_data(checkpoint.config)
    x, y = data.observations("test", device), data.labels("test", device)
    error = classification_error(checkpoint.pair.guide, x, y)
    last = load_run(run_dir, device, LAST)
    error_last = classification_error(last.pair.guide, x, y)
    bounds = _bounds(checkpoint, x[:: cell.test_stride], cell.iw_samples, cell.seed)
    eval_seconds = time.perf_counter() - t
    history = _history(run_dir)
    seconds = [h["seconds"] for h in history]
    plan = json.loads((run_dir / "labelled.json").read_text())
    best = checkpoint.train_state.epoch
    saved = checkpoint.config
    record = {
        "id": cell.id, "kind": "cell", "tier": tier, "cell": dataclasses.asdict(cell), "family": cell.family,
        "model": cell.model, "labelled": cell.labelled, "seed": cell.seed,
        "test_error": error, "test_error_last_epoch": error_last, "test_error_n": int(x.shape[0]),
        "valid_error_best_epoch": history[best - 1].get("valid_error") if best else None,
        "valid_error_per_epoch": [h.get("valid_error") for h in history],
        "test": {"split": "test", "n": bounds["n"], "stride": cell.test_stride},
        "bounds_of": "MNIST pixels (the suite's fixed binarization of the test split), nats per image"
        if cell.model == "m2" else "M1 codes (Gaussian density of the kept code dimensions), nats per code",
        **bounds,
        "alpha": saved.alpha, "labelled_batch": plan["labelled_batch"], "unlabelled_batch": plan["unlabelled_batch"],
        "objective": saved.objective, "likelihood": saved.likelihood, "binarize": saved.binarize,
        "data": saved.dataset if cell.model == "m2" else "M1 codes", "obs_dim": int(data.obs_dim),
        "epochs": len(history), "best_epoch": best, "steps": history[-1]["step"],
        "steps_per_epoch": history[-1]["step"] // len(history),
        "seconds_per_epoch": sum(seconds) / len(seconds), "train_seconds": train_seconds, "eval_seconds": eval_seconds,
        "wall_seconds": time.perf_counter() - wall0, "resumed": resumed,
        "parameters": {**{part: sum(p.numel() for p in getattr(checkpoint.pair, part).parameters())
                          for part in ("model", "guide")},
                       "total": sum(p.numel() for p in checkpoint.pair.parameters())},
        "published": table.published(cell),
        **_facts(device, load_before, cpu0, wall0),
    }
    return record


# --- the markdown and the command line -------------------------------------------------------------------

def write_markdown(results: Path, tier: str, device: str) -> Path:
    """``OUT/<name>.md`` from the results files alone; the cpu tier's lists the paper tier as unmeasured."""
    return tiers.write_tier_markdown(results, tier, device, TIERS, table, "semisupervised.py")


def parse(argv) -> argparse.Namespace:
    parser = tiers.table_tier_parser("semisupervised.py", __doc__, TIERS,
                                          "retrain cells (and the M1) already in the results", "cells")
    return tiers.check_arguments(parser.parse_args(argv), TIERS)


def run_tier(args) -> int:
    if args.list:
        print("\n".join(table.tier_lines(TIERS[args.tier])))
        return 0
    spec = TIERS[args.tier]
    device = resolve_device(args.device)
    cells, data_dir = nll.selected(spec.cells, args)
    results = Path(args.out)
    results.mkdir(parents=True, exist_ok=True)
    work = Path(args.work or Path("runs") / "bench" / f"semisupervised-{args.tier}") / device.type
    jsonl = results / f"{table.results_name(args.tier, device.type)}-{datetime.date.today().isoformat()}.jsonl"
    done = {r["id"] for r in table.read_records(results, args.tier, device.type)}
    started = time.perf_counter()
    with tiers.torch_threads(args.threads or spec.threads):
        codes = None
        todo = [c for c in cells if args.force or c.id not in done]
        if any(c.model == "m1m2" for c in todo):
            codes = run_m1(spec.m1, args.tier, device, work, data_dir, results, jsonl, args.force)
            write_markdown(results, args.tier, device.type)
        for n, cell in enumerate(cells, 1):
            head = f"[{n}/{len(cells)}] {cell.id}"
            if cell not in todo:
                print(f"{head}: in the results, skipped (--force retrains)", flush=True)
                continue
            if args.force and (work / cell.id).exists():
                nll.remove(work / cell.id, "--force")
            print(f"{head}: training {cell.epochs} epochs ...", flush=True)
            record = run_cell(cell, args.tier, device, work, data_dir, codes)
            nll.append_record(jsonl, record)
            write_markdown(results, args.tier, device.type)
            print(f"{head}: test error {100 * record['test_error']:.2f}%, -ELBO {record['neg_elbo']:.2f}, NLL "
                  f"{record['nll']:.2f} ± {record['nll_se']:.2f} (K={record['iw_samples']}), "
                  f"{record['seconds_per_epoch']:.1f} s/epoch, {record['wall_seconds']:.0f} s", flush=True)
    path = write_markdown(results, args.tier, device.type)
    print(f"wrote {path} ({time.perf_counter() - started:.0f} s)")
    return 0


def main(argv=None) -> int:
    return tiers.cli("semisupervised.py", parse, run_tier, argv)


if __name__ == "__main__":
    sys.exit(main())
