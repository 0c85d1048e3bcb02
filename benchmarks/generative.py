"""Priors and remedies for the prior hole at one training budget: NLL, FID, ELBO surgery and the hole.

    python benchmarks/generative.py --tier smoke|cpu|paper [--device cpu|cuda|auto] [--only TEXT[,TEXT]]
                                    [--force] [--list] [--out DIR] [--work DIR] [--data-dir DIR]
                                    [--threads N]

One row per prior or remedy, on dynamically binarized MNIST with the VampPrior paper's one-layer
network (Tomczak & Welling 2018, arXiv:1705.07120: MLP 784-300-300-40, diagonal Gaussian guide,
Bernoulli pixels):

- ``standard``, ``mog`` (10 learned diagonal components), ``vamp`` (500 pseudo-inputs) and
  ``realnvp`` (a learned flow prior): each trained from scratch with the same budget;
- remedies applied to the trained ``standard`` run: ``refit-gmm`` and ``refit-realnvp``
  (``pyro_vae.refit``: a density fitted to its training codes becomes the prior of a new run; Ghosh
  et al. 2019, arXiv:1903.12436; Xu et al. 2019, arXiv:1905.13452) and ``two-stage`` (Dai & Wipf
  2019, arXiv:1903.05789: a second VAE on its ``--what posterior`` codes, Gaussian likelihood,
  sampled through both stages by ``pyro_vae.two_stage``).

Each row is scored on the test split (best epoch by validation ELBO): the ELBO and the K-sample
NLL of ``pyro_vae.evaluate`` on ``test[::test_stride]`` (none for two-stage, whose composite
model has no joint density here: its second stage's code-space bound instead), and
``pyro_vae.cli_quality.assess_run``: ELBO surgery (I(x;z), KL(q(z)||p(z))), the prior hole of the
row's prior and, for a prior other than N(0, I), of N(0, I) draws, and FID / precision / recall in
the suite's own feature space (``pyro_vae.features``: not Inception, so never comparable with
papers' FIDs). The ``paper`` tier declares the published budgets (for a GPU); ``cpu`` runs the
same networks for a few epochs, about half an hour on a busy 2-core machine; ``smoke`` checks the
pipeline on the bundled 8x8 digits in seconds. ``generative_table`` holds the published figures,
reads the results files and writes the markdown.

Rows train with ``pyro_vae.train.fit`` into ``WORK/<device>/<row id>`` (default WORK
``runs/bench/generative-<tier>``); an interrupted training continues. One JSON line per finished
row is appended to ``OUT/generative-<tier>-<device>-<date>.jsonl`` with the machine, versions and
date; a row already there is skipped unless ``--force``. ``OUT/<name>.md`` is regenerated from
those lines, the latest per row: <name> is ``generative-cpu`` for the cpu tier on a CPU,
``generative-<tier>-<device>`` otherwise (semisupervised.py's rule).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyro
import torch

from pyro_vae import encode as encode_mod
from pyro_vae import quality, two_stage
from pyro_vae.cli_quality import assess_run
from pyro_vae.config import RunConfig
from pyro_vae.data import SPLITS
from pyro_vae.errors import PyroVAEError
from pyro_vae.evaluate import evaluate
from pyro_vae.io import write_text_atomic
from pyro_vae.refit import refit
from pyro_vae.run import BEST, LAST, load_data, load_run, resolve_device
from pyro_vae.train import fit

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling modules, however this is run
import generative_table as table  # noqa: E402  (published figures, results files, the markdown)
import nll  # noqa: E402  (data folders, run-directory reuse, --only and --data-dir)
import throughput  # noqa: E402  (machine and version facts)
import tiers  # noqa: E402  (the command line shared by the tier benchmarks)

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Net:
    """An MLP of ReLU layers ``hidden`` with ``latent_dim`` latent units (the guide mirrors it)."""

    hidden: tuple
    latent_dim: int
    activation: str = "relu"


@dataclass(frozen=True)
class Budget:
    """How a row trains: ``epochs`` at most, stopped after ``patience`` epochs without a better
    validation ELBO, KL warm-up over ``warmup_epochs``, Adam at ``lr``, one-sample ``objective``."""

    epochs: int
    batch_size: int
    lr: float
    warmup_epochs: int
    patience: int
    objective: str = "elbo"  # the Monte-Carlo KL for every prior, as Tomczak & Welling's code


@dataclass(frozen=True)
class Row:
    """One line of the table. ``kind``: ``prior`` (trained from scratch with ``net`` and
    ``budget``), ``refit`` (``density`` fitted to the codes of the run of row ``source``; ``prior``
    is the prior that density becomes) or ``two-stage`` (a second VAE ``net``/``budget`` on the
    ``source`` run's posterior codes). ``options``: the prior's options (a refit's: its own)."""

    id: str
    kind: str
    prior: str
    what: str
    options: tuple = ()
    net: Net | None = None
    budget: Budget | None = None
    source: str | None = None
    density: str | None = None


@dataclass(frozen=True)
class Tier:
    about: str  # printed above its tables: generative_table.ABOUT
    dataset: str
    binarize: str
    rows: tuple
    iw_samples: int  # NLL on test[::test_stride]
    test_stride: int
    samples: int  # quality: model samples and test images compared
    codes: int  # quality: training codes and prior draws of the ELBO surgery and the hole
    mixture: int | None  # quality: training images in the aggregate posterior (None: all, exact)
    threads: int | None  # torch intra-op threads unless --threads says otherwise (None: torch's)
    seed: int = 0

    def row(self, row_id: str) -> Row:
        return next(r for r in self.rows if r.id == row_id)


def _rows(net: Net, budget: Budget, second: Net, second_budget: Budget, mog: int = 10, pseudo_inputs: int = 500,
          components: int = 10) -> tuple:
    return (
        Row("standard", "prior", "standard", "N(0, I)", (), net, budget),
        Row("mog", "prior", "mog", f"learned mixture of {mog} diagonal Gaussians",
            (("components", mog), ("covariance", "diag")), net, budget),
        Row("vamp", "prior", "vamp", f"VampPrior, {pseudo_inputs} pseudo-inputs", (("pseudo_inputs", pseudo_inputs),),
            net, budget),
        Row("realnvp", "prior", "realnvp", "learned RealNVP flow prior (4 couplings)", (), net, budget),
        Row("refit-gmm", "refit", "mog", f"`standard` + GMM ({components} full-covariance components) refitted",
            (("components", components),), source="standard", density="gmm"),
        Row("refit-realnvp", "refit", "realnvp", "`standard` + RealNVP refitted", (), source="standard",
            density="realnvp"),
        Row("two-stage", "two-stage", "standard",
            f"`standard` + second VAE {'-'.join(map(str, (net.latent_dim,) + tuple(second.hidden)))}-"
            f"{second.latent_dim} on its codes", (), second, second_budget, source="standard"),
    )


PAPER_NET = Net((300, 300), 40)


def _paper() -> Tier:
    # Tomczak & Welling's experiment.py: --epochs 2000, --early_stopping_epochs 50, --warmup 100,
    # --lr 0.0005, --batch_size 100, --number_components 500, --S 5000 (NLL importance samples);
    # Dai & Wipf's demo.py: --second-depth 3, --second-dim 1024, --epochs2 800, --lr2 0.0001,
    # --batch-size 64, the second stage's latent size that of the first.
    budget = Budget(2000, 100, 5e-4, 100, 50)
    second = Net((1024, 1024, 1024), 40)
    return Tier(table.ABOUT["paper"], "mnist", "dynamic",
                _rows(PAPER_NET, budget, second, Budget(800, 64, 1e-4, 0, 800)),
                iw_samples=5000, test_stride=1, samples=10000, codes=2000, mixture=None, threads=None)


def _cpu() -> Tier:
    budget = Budget(20, 100, 1e-3, 1, 20)
    return Tier(table.ABOUT["cpu"], "mnist", "dynamic",
                # the second stage warms its KL up: without it, it collapsed in its first epoch (no active unit)
                _rows(PAPER_NET, budget, Net((300, 300, 300), 40), Budget(40, 100, 1e-3, 5, 40)),
                iw_samples=1000, test_stride=10, samples=10000, codes=2000, mixture=None, threads=1)


def _smoke() -> Tier:
    budget = Budget(20, 128, 1e-3, 0, 20)
    return Tier(table.ABOUT["smoke"], "digits", "dynamic",
                _rows(Net((32,), 4), budget, Net((32, 32, 32), 4), budget, pseudo_inputs=20),
                iw_samples=50, test_stride=1, samples=300, codes=300, mixture=None, threads=1)


TIERS = {"smoke": _smoke(), "cpu": _cpu(), "paper": _paper()}
for _name, _tier in TIERS.items():
    assert len({r.id for r in _tier.rows}) == len(_tier.rows), f"two rows of tier {_name} share an id"
    assert all(r.source is None or any(s.id == r.source for s in _tier.rows) for r in _tier.rows), _name


# --- running ------------------------------------------------------------------------------------------

def config_for(spec: Tier, row: Row, data_dir, device: str, out: Path, codes: Path | None = None) -> RunConfig:
    """The run of a ``prior`` row (pixels) or of a ``two-stage`` row's second stage (``codes``)."""
    net, b = row.net, row.budget
    if row.kind == "two-stage":
        data = {"dataset": str(Path(codes).resolve()), "data_dir": None, "binarize": "none", "likelihood": "gaussian",
                "prior": "standard", "prior_options": {}}
    else:
        data = {"dataset": spec.dataset, "data_dir": None if data_dir is None else str(data_dir),
                "binarize": spec.binarize, "likelihood": "bernoulli", "prior": row.prior,
                "prior_options": dict(row.options)}
    return RunConfig(**data, arch="mlp", hidden=list(net.hidden), activation=net.activation, latent_dim=net.latent_dim,
                     guide="diag", objective=b.objective, epochs=b.epochs, batch_size=b.batch_size, lr=b.lr,
                     warmup_epochs=b.warmup_epochs, patience=b.patience, seed=spec.seed, device=device, out=str(out))


def _history(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _train(config: RunConfig, run_dir: Path) -> tuple[bool, float]:
    """Train ``config`` into ``run_dir`` (continuing an interrupted run of the same setting); whether
    it resumed and the wall seconds of this call."""
    resumed = nll.prepare(run_dir, config)
    if resumed:
        print(f"  continuing the run in {run_dir}", flush=True)
    started = time.perf_counter()
    fit(config, resume=resumed, progress=False)
    return resumed, time.perf_counter() - started


def _complete(run_dir: Path, config: RunConfig) -> bool:
    """Whether ``run_dir`` holds a finished training of ``config`` (all epochs, or stopped early)."""
    if not ((run_dir / BEST).is_file() and (run_dir / LAST).is_file() and (run_dir / "config.json").is_file()):
        return False
    try:
        saved = RunConfig.load(run_dir / "config.json").to_dict()
    except PyroVAEError:
        return False
    if nll._comparable(saved) != nll._comparable(config.to_dict()):
        return False
    state = load_run(run_dir, "cpu", LAST).train_state
    return state.epoch >= config.epochs or state.epoch - state.best_epoch >= config.patience


def _bounds(checkpoint, x: torch.Tensor, iw_samples: int, seed: int) -> dict:
    pyro.set_rng_seed(seed)
    r = evaluate(checkpoint.pair.model, checkpoint.pair.guide, x, None, iw_samples=iw_samples)
    return {"neg_elbo": -r["elbo"], "neg_elbo_se": r["elbo_se"], "recon": r["recon"], "kl": r["kl"],
            "nll": r["nll"], "nll_se": r["nll_se"], "iw_samples": r["iw_samples"], "active_units": r["active_units"],
            "latent_dim": r["latent_dim"], "n": r["n"]}


def _quality(run_dir: Path, spec: Tier, device) -> tuple[dict, float]:
    """``assess_run`` of the run (also written to its quality.json, as ``pyro-vae quality`` does)."""
    started = time.perf_counter()
    result = assess_run(run_dir, samples=spec.samples, codes=spec.codes, mixture=spec.mixture, device=device.type,
                        seed=spec.seed)
    write_text_atomic(run_dir / "quality.json", json.dumps(result, indent=2) + "\n")
    # the results line names the run (and a second stage's codes) by file name: no path of the measuring machine
    return {**result, "run": run_dir.name, "dataset": Path(result["dataset"]).name}, time.perf_counter() - started


def _facts(device, load_before: float, cpu_before: float, wall_before: float) -> dict:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    busy = (time.process_time() - cpu_before) / max(1e-9, time.perf_counter() - wall_before)
    return throughput.finish_facts(device, load_before, busy, peak_rss_mib=nll.peak_rss_mib())


def _training_fields(run_dir: Path, checkpoint) -> dict:
    history = _history(run_dir)
    seconds = [h["seconds"] for h in history]
    return {"epochs": len(history), "best_epoch": checkpoint.train_state.epoch, "steps": history[-1]["step"],
            "seconds_per_epoch": sum(seconds) / len(seconds), "train_seconds": sum(seconds)}


def ensure_source(spec: Tier, row: Row, device, work: Path, data_dir) -> tuple[Path, float]:
    """The trained run of the row ``row.source`` (trained here first if it is not finished) and
    the seconds its training took (its epochs, validation included)."""
    source = spec.row(row.source)
    run_dir = work / source.id
    config = config_for(spec, source, data_dir, device.type, run_dir)
    if not _complete(run_dir, config):
        print(f"  training the `{source.id}` run it remedies first ({source.budget.epochs} epochs) ...", flush=True)
        _train(config, run_dir)
    return run_dir, sum(h["seconds"] for h in _history(run_dir))


def _base_record(spec: Tier, tier: str, row: Row, run_dir: Path, checkpoint) -> dict:
    return {"id": row.id, "kind": row.kind, "tier": tier, "what": row.what, "prior": checkpoint.config.prior,
            "prior_options": checkpoint.config.prior_options, "source": row.source,
            "row": dataclasses.asdict(row), "budget": None if row.budget is None else dataclasses.asdict(row.budget),
            "dataset": spec.dataset, "binarize": spec.binarize, "run": run_dir.name,
            "objective": checkpoint.config.objective,
            "parameters": sum(p.numel() for p in checkpoint.pair.parameters()),
            "published": table.published(spec, row)}


def _pixel_scores(spec: Tier, run_dir: Path, device) -> tuple:
    checkpoint = load_run(run_dir, device, BEST)
    data = load_data(checkpoint.config)
    t = time.perf_counter()
    x = data.observations("test", device)[:: spec.test_stride]
    bounds = _bounds(checkpoint, x, spec.iw_samples, spec.seed)
    eval_seconds = time.perf_counter() - t
    return checkpoint, bounds, eval_seconds


def run_prior(spec: Tier, tier: str, row: Row, device, work: Path, data_dir) -> dict:
    run_dir = work / row.id
    config = config_for(spec, row, data_dir, device.type, run_dir)
    resumed, fit_seconds = _train(config, run_dir)
    checkpoint, bounds, eval_seconds = _pixel_scores(spec, run_dir, device)
    q, quality_seconds = _quality(run_dir, spec, device)
    training = _training_fields(run_dir, checkpoint)
    return {**_base_record(spec, tier, row, run_dir, checkpoint),
            "test": {"split": "test", "n": bounds["n"], "stride": spec.test_stride}, **bounds, "quality": q,
            **training, "own_seconds": training["train_seconds"], "source_train_seconds": None,
            "fit_seconds": fit_seconds, "eval_seconds": eval_seconds, "quality_seconds": quality_seconds,
            "resumed": resumed}


def run_refit(spec: Tier, tier: str, row: Row, device, work: Path, data_dir) -> dict:
    source_dir, source_seconds = ensure_source(spec, row, device, work, data_dir)
    run_dir = work / row.id
    if run_dir.exists():
        nll.remove(run_dir, "a refit is written afresh")
    t = time.perf_counter()
    # refit draws its codes from a stream of its own (pyro_vae.refit.codes_seed), never quality's
    fitted = refit(source_dir, row.density, run_dir, components=dict(row.options).get("components", 10),
                   seed=spec.seed, device=device)
    fit_seconds = time.perf_counter() - t
    checkpoint, bounds, eval_seconds = _pixel_scores(spec, run_dir, device)
    q, quality_seconds = _quality(run_dir, spec, device)
    return {**_base_record(spec, tier, row, run_dir, checkpoint),
            "test": {"split": "test", "n": bounds["n"], "stride": spec.test_stride}, **bounds, "quality": q,
            "refit": {**fitted, "source_run": Path(fitted["source_run"]).name}, "epochs": None, "best_epoch": None, "seconds_per_epoch": None, "train_seconds": None,
            "own_seconds": fit_seconds, "source_train_seconds": source_seconds, "eval_seconds": eval_seconds,
            "quality_seconds": quality_seconds, "resumed": False}


def encode_codes(source_dir: Path, codes: Path, device, seed: int) -> tuple[dict, bool, float]:
    """The source run's posterior codes (means and standard deviations of every split) with its
    checkpoint's hash; written to ``codes`` unless the file there came from this very checkpoint."""
    t = time.perf_counter()
    checkpoint = load_run(source_dir, device, BEST)
    data = load_data(checkpoint.config)
    pyro.set_rng_seed(seed)
    arrays = encode_mod.encode(checkpoint.pair, data, checkpoint.config, SPLITS, "posterior", device)
    arrays.update(two_stage.source_arrays(source_dir))
    same = False
    if codes.is_file():
        with np.load(codes, allow_pickle=False) as f:
            same = "source_sha256" in f.files and str(f["source_sha256"]) == str(arrays["source_sha256"])
    if not same:
        encode_mod.write(codes, arrays)
    return arrays, not same, time.perf_counter() - t


def composite_hole(source_dir: Path, second, spec: Tier, device) -> dict | None:
    """The share of the two-stage prior's codes (u ~ N(0, I), z ~ p(z|u)) in the first
    stage's prior hole: the same q(z), draws and threshold as the first stage's own hole (the same
    seed as ``quality.assess``), so it stands beside ``standard``'s prior hole."""
    first = load_run(source_dir, device, BEST)
    model, guide = first.pair.model.eval(), first.pair.guide.eval()
    site = getattr(model, "prior_site", None)
    if site is None or second.pair.model.classes:
        return None
    x_train = load_data(first.config).observations("train", device)
    generator = torch.Generator().manual_seed(spec.seed)
    torch.manual_seed(spec.seed)
    cut = quality.surgery(model, guide, x_train, None, spec.codes, spec.mixture, generator)
    x_like = load_data(second.config).observations("test", device)
    z = two_stage.sample_codes(second.pair.model.eval(), cut["codes"], x_like.shape[1], device)
    event = tuple(model.prior().event_shape)
    if tuple(z.shape[1:]) != event:
        return None
    hole = quality.prior_hole(model, guide, x_train, None, cut["log_q_codes"], cut["mixture_rows"], cut["codes"],
                              values={site: z})
    return {"fraction": hole["fraction"], "se": hole["se"], "threshold": hole["threshold"], "codes": cut["codes"],
            "site": site}


def run_two_stage(spec: Tier, tier: str, row: Row, device, work: Path, data_dir) -> dict:
    source_dir, source_seconds = ensure_source(spec, row, device, work, data_dir)
    run_dir, codes = work / row.id, work / f"{row.id}.codes.npz"
    arrays, written, encode_seconds = encode_codes(source_dir, codes, device, spec.seed)
    if written and run_dir.exists():
        nll.remove(run_dir, "its first stage's codes were encoded again")
    config = config_for(spec, row, data_dir, device.type, run_dir, codes)
    resumed, fit_seconds = _train(config, run_dir)
    second = load_run(run_dir, device, BEST)
    t = time.perf_counter()
    x_codes = load_data(second.config).observations("test", device)[:: spec.test_stride]
    code_space = _bounds(second, x_codes, spec.iw_samples, spec.seed)
    eval_seconds = time.perf_counter() - t
    q, quality_seconds = _quality(run_dir, spec, device)
    t = time.perf_counter()
    hole = composite_hole(source_dir, second, spec, device)
    quality_seconds += time.perf_counter() - t
    training = _training_fields(run_dir, second)
    return {**_base_record(spec, tier, row, run_dir, second),
            "test": {"split": "test", "n": code_space["n"], "stride": spec.test_stride},
            "nll": None, "nll_se": None, "neg_elbo": None, "neg_elbo_se": None, "iw_samples": None,
            "nll_na": table.TWO_STAGE_NLL, "active_units": code_space["active_units"],
            "latent_dim": code_space["latent_dim"], "code_space": code_space, "quality": q, "composite_hole": hole,
            "codes": {"path": codes.name, "what": "posterior", "rows": int(arrays["x"].shape[0]),
                      "dims": int(arrays["x"].shape[1]), "seconds": encode_seconds, "written": written},
            **training, "own_seconds": encode_seconds + training["train_seconds"],
            "source_train_seconds": source_seconds, "fit_seconds": fit_seconds, "eval_seconds": eval_seconds,
            "quality_seconds": quality_seconds, "resumed": resumed}


RUNNERS = {"prior": run_prior, "refit": run_refit, "two-stage": run_two_stage}


def run_row(spec: Tier, tier: str, row: Row, device, work: Path, data_dir, command: str | None = None) -> dict:
    """The results line of ``row``; ``command`` is the command line that measured it."""
    load_before, cpu0, wall0 = os.getloadavg()[0], time.process_time(), time.perf_counter()
    record = RUNNERS[row.kind](spec, tier, row, device, work, data_dir)
    record["wall_seconds"] = time.perf_counter() - wall0
    record["command"] = command
    record.update(_facts(device, load_before, cpu0, wall0))
    return record


# --- the markdown and the command line -------------------------------------------------------------------

def write_markdown(results: Path, tier: str, device: str) -> Path:
    """``OUT/<name>.md`` from the results files alone; the cpu tier's lists the paper tier as unmeasured."""
    return tiers.write_tier_markdown(results, tier, device, TIERS, table, "generative.py")


def parse(argv) -> argparse.Namespace:
    parser = tiers.table_tier_parser("generative.py", __doc__, TIERS, "rerun rows already in the results", "rows")
    args = tiers.check_arguments(parser.parse_args(argv), TIERS)
    args.command = portable_command(sys.argv[1:] if argv is None else argv)
    return args


# flags whose values are folders of the measuring machine: the results name them, not their paths
FOLDER_FLAGS = {"--data-dir": "DATA", "--work": "WORK", "--out": "OUT", "--results": "OUT"}


def portable_command(argv: list[str]) -> str:
    """The command line as the results record it: folder arguments replaced by their names."""
    words, args = ["python", "benchmarks/generative.py"], list(argv)
    for i, word in enumerate(args):
        flag, eq, _ = word.partition("=")
        if flag in FOLDER_FLAGS and eq:
            args[i] = f"{flag}={FOLDER_FLAGS[flag]}"
        elif i > 0 and args[i - 1] in FOLDER_FLAGS:
            args[i] = FOLDER_FLAGS[args[i - 1]]
    return shlex.join(words + args)


def _summary(record: dict) -> str:
    q = record["quality"]
    nll_text = record.get("nll_na") if record["nll"] is None else \
        f"NLL {record['nll']:.2f} ± {record['nll_se']:.2f} (K={record['iw_samples']})"
    fid = "—" if q.get("fid") is None else f"{q['fid']:.2f}"
    return (f"{nll_text}, FID {fid}, I(x;z) {q.get('mutual_information', float('nan')):.2f}, "
            f"KL(q(z)||p(z)) {q.get('marginal_kl', float('nan')):.2f}, {record['wall_seconds']:.0f} s")


def run_tier(args) -> int:
    if args.list:
        print("\n".join(table.tier_lines(TIERS[args.tier])))
        return 0
    spec = TIERS[args.tier]
    device = resolve_device(args.device)
    rows, data_dir = nll.selected(spec.rows, args)
    results = Path(args.out)
    results.mkdir(parents=True, exist_ok=True)
    work = Path(args.work or Path("runs") / "bench" / f"generative-{args.tier}") / device.type
    if spec.dataset == "mnist":
        data_dir = nll.mnist_root(data_dir, work)
    jsonl = results / f"{table.lines_name(args.tier, device.type)}-{datetime.date.today().isoformat()}.jsonl"
    done = {r["id"] for r in table.read_records(results, args.tier, device.type)}
    started = time.perf_counter()
    with tiers.torch_threads(args.threads or spec.threads):
        for n, row in enumerate(rows, 1):
            head = f"[{n}/{len(rows)}] {row.id}"
            if row.id in done and not args.force:
                print(f"{head}: in the results, skipped (--force reruns)", flush=True)
                continue
            if args.force and (work / row.id).exists():
                nll.remove(work / row.id, "--force")
            print(f"{head}: {row.what} ...", flush=True)
            record = run_row(spec, args.tier, row, device, work, data_dir, args.command)
            nll.append_record(jsonl, record)
            write_markdown(results, args.tier, device.type)
            print(f"{head}: {_summary(record)}", flush=True)
    path = write_markdown(results, args.tier, device.type)
    print(f"wrote {path} ({time.perf_counter() - started:.0f} s)")
    return 0


def main(argv=None) -> int:
    return tiers.cli("generative.py", parse, run_tier, argv)


if __name__ == "__main__":
    sys.exit(main())
