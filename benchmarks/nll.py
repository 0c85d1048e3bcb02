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
from dataclasses import dataclass, field
from pathlib import Path

import pyro
import torch

from pyro_vae import datasets_images
from pyro_vae.config import RunConfig
from pyro_vae.errors import PyroVAEError
from pyro_vae.evaluate import bits_per_dim, evaluate
from pyro_vae.io import write_text_atomic
from pyro_vae.likelihoods import LIKELIHOODS
from pyro_vae.models import MODELS
from pyro_vae.nets import ARCHITECTURES
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
    ``batch_norm`` are those of ``RunConfig``. ``likelihood_options`` and ``arch_options`` are
    ``RunConfig``'s too: a cell names every option its likelihood and architecture declare (dmol's
    mixtures; resnet's channels, blocks, downsample), so that its id says what it trains.
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
    likelihood_options: dict = field(default_factory=dict)
    arch_options: dict = field(default_factory=dict)

    def __post_init__(self):
        # a hierarchical cell names its inter-layer widths, so that its id says what it trains
        # and a change of the package's default cannot change a cell under a fixed id
        several = isinstance(self.latent_dim, tuple) and len(self.latent_dim) > 1
        if several != (self.layer_hidden is not None):
            raise ValueError(f"layer_hidden goes with a tuple of two or more latent sizes: latent_dim "
                             f"{self.latent_dim!r}, layer_hidden {self.layer_hidden!r}")
        # every declared option named, none other: a change of a default cannot change a cell
        for what, registry, name, options in (("likelihood", LIKELIHOODS, self.likelihood, self.likelihood_options),
                                              ("arch", ARCHITECTURES, self.arch, self.arch_options)):
            declared = list(registry[name].options())
            if sorted(options) != sorted(declared):
                raise ValueError(f"{what} {name!r} declares the options {declared}; the cell names "
                                 f"{sorted(options)}: name each of them")

    @property
    def levels(self) -> int | None:
        """Values per pixel the likelihood scores (256: 8-bit, reported in bits/dim; 2; None: a density)."""
        return LIKELIHOODS[self.likelihood].meta.get("levels")

    @property
    def latent_dims(self) -> tuple:
        return tuple(self.latent_dim) if isinstance(self.latent_dim, tuple) else (self.latent_dim,)

    @property
    def id(self) -> str:
        """``data.network.guide[K flows][.ladder].objective[k]``; the data read
        ``dataset[-binarize][-<8-bit likelihood><its option values>]`` (``frey-categorical``,
        ``mnist-dmol3``); the network ``arch<hidden>[-c<channels>-b<blocks>-d<downsample>][-act]-z<sizes>
        [-lh<layer_hidden>][-bn]``, the latent sizes nearest x first."""
        data = self.dataset + ("" if self.binarize == "none" else f"-{self.binarize}")
        if self.levels == 256:  # the likelihoods of Bernoulli and Gaussian cells stay implicit, as before
            declared = LIKELIHOODS[self.likelihood].options()
            data += f"-{self.likelihood}" + "".join(str(self.likelihood_options[k]) for k in declared)
        act = "" if self.activation == "relu" else f"-{self.activation}"
        arch = "".join(f"-{ARCH_TAGS.get(k, k)}{self.arch_options[k]}" for k in ARCHITECTURES[self.arch].options())
        net = f"{self.arch}{'-'.join(map(str, self.hidden))}{arch}{act}-z{'-'.join(map(str, self.latent_dims))}"
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
                         binarize=self.binarize, likelihood=self.likelihood,
                         likelihood_options=dict(self.likelihood_options), arch=self.arch,
                         arch_options=dict(self.arch_options), hidden=list(self.hidden),
                         activation=self.activation, latent_dim=dims[0] if len(dims) == 1 else list(dims),
                         layer_hidden=None if self.layer_hidden is None else list(self.layer_hidden),
                         inference=self.inference, batch_norm=self.batch_norm, guide=self.guide,
                         guide_options=options, objective=self.objective, particles=self.particles,
                         warmup_epochs=self.warmup_epochs, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                         patience=self.patience or self.epochs, seed=self.seed, device=device, out=str(out))


# --- the grid: small tables, combined into TIERS below ---------------------------------------------

DATA = {  # key: (dataset, binarize, likelihood[, likelihood options])
    "digits": ("digits", "dynamic", "bernoulli"),
    "static": ("binarized-mnist", "none", "bernoulli"),  # Larochelle-Murray, fixed binarization
    "dynamic": ("mnist", "dynamic", "bernoulli"),
    "frey": ("frey", "none", "gaussian"),
    # 8-bit pixels, scored by the probabilities of their 256 levels (bits/dim exact)
    "frey-categorical": ("frey", "none", "categorical"),  # van den Berg et al. 2018's likelihood
    "frey-dmol": ("frey", "none", "dmol", {"mixtures": 5}),
    "mnist-dmol": ("mnist", "none", "dmol", {"mixtures": 3}),
    "cifar10": ("cifar10", "none", "dlogistic"),  # Kingma et al. 2016's discretized logistic
}
# the architecture options in cell ids: resnet128-c64-b2-d2 = channels 64, blocks 2, downsample 2
ARCH_TAGS = {"channels": "c", "blocks": "b", "downsample": "d"}


def _cifar10_absent(root: Path) -> list[Path]:
    _, train, test = datasets_images.cifar10_paths(root)
    return [p for p in train + [test] if not p.is_file()]


# Datasets that are not on every machine: a cell of one is skipped, with the reason, where its files
# are absent (it stays declared, and the markdown names what it needs). dataset -> (what the
# machine needs, a function of the data folder giving the missing files).
NEEDS = {
    "cifar10": ("CIFAR-10 in torchvision's layout (DATA_DIR/cifar-10-batches-py/) and a GPU", _cifar10_absent),
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
    arch_options: dict | None = None  # resnet: channels, blocks, downsample (all three named)


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
    # 8-bit Frey faces on a CPU: a categorical decoder gives 256 logits per pixel (143,360 outputs,
    # 18.4M weights behind 128 units), whose softmax, not the width, sets the step time
    "frey8": Net("mlp", (128,), "tanh", 10),
    # 8-bit MNIST: dmol's 3 mixtures give 3 x 3 = 9 numbers per pixel (7,056 outputs)
    "mnist8": Net("mlp", (256,), "relu", 32),
    # CIFAR-10 for a GPU: the suite's weight-normalized ResNet, 128 channels, 4 blocks at each of
    # 32x32, 16x16, 8x8, one latent vector of 128 (Kingma et al. 2016's ResNet VAE has a hierarchy of
    # spatial latent layers with bidirectional inference, which the suite cannot express)
    "cifar-resnet": Net("resnet", (512,), "elu", 128, arch_options={"channels": 128, "blocks": 4, "downsample": 2}),
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
        # 8-bit cells: minutes each on one CPU thread, all six within about 12 minutes (ABOUT below).
        # Few epochs, so a higher learning rate and smaller batches than the nats cells; K is small
        # because every importance sample decodes a whole image: 143,360 logits (categorical).
        "frey8-categorical": Budget(epochs=10, batch_size=50, lr=3e-3, iw_samples=50),
        "frey8-dmol": Budget(epochs=30, batch_size=25, lr=3e-3, iw_samples=200),
        "mnist8": Budget(epochs=2, batch_size=100, lr=2e-3, iw_samples=100, test_stride=20),
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
        # van den Berg et al. 2018's Frey budget (their code: 2000 epochs, batch 100, learning rate
        # 5e-4, early stopping after 100 epochs without progress, KL warm-up over 100 epochs; Adamax
        # there, Adam here)
        "frey8": Budget(epochs=2000, batch_size=100, lr=5e-4, iw_samples=2000, patience=100, warmup_epochs=100),
        # CIFAR-10 on one GPU (Kingma et al. trained far longer, on 8 GPUs): 703 steps of 64 per epoch;
        # 256 importance samples on every tenth test image keep the evaluation near an hour
        "cifar": Budget(epochs=1000, batch_size=64, lr=1e-3, iw_samples=256, test_stride=10, patience=50),
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
                "the IWAE bound, named. The 8-bit cells (`frey-categorical`, `frey-dmol5`, `mnist-dmol3`: 8-bit "
                "pixels scored by the probabilities of their 256 levels, reported in bits/dim) are sized for "
                "minutes each, all six in about 12 minutes on one CPU thread: Frey faces on a 128-unit tanh MLP "
                "with z = 10, categorical for 10 epochs (batch 50, Adam 3e-3, K = 50) and a mixture of 5 "
                "discretized logistics for 30 epochs (batch 25, Adam 3e-3, K = 200), all 196 test images; "
                "MNIST's grey levels on a 256-unit ReLU MLP with z = 32 and 3 mixtures, 2 epochs (batch 100, "
                "Adam 2e-3, K = 100 on test[::20]). They are far from converged: the published Frey figures "
                "(van den Berg et al. 2018) come from up to 2000 epochs of a gated-convolution network with "
                "z = 64.",
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
             "expected. The `frey-categorical` cells train with van den Berg et al. 2018's budget (2000 epochs, "
             "batch 100, learning rate 5e-4, early stopping after 100, KL warm-up over 100 epochs; Adam for "
             "their Adamax) on the suite's 128-unit MLP with z = 10, not their gated convolutions with z = 64. "
             "The CIFAR-10 cells (discretized logistic pixels, the suite's weight-normalized ResNet: 128 "
             "channels, 4 residual blocks at each of 32x32, 16x16 and 8x8, ELU, one latent vector of 128, "
             "diagonal or 4 IAF steps) need CIFAR-10 in torchvision's layout and a GPU: 1000 epochs of 703 "
             "steps of 64 images (Adam 1e-3, early stopping after 50), NLL with 256 importance samples on "
             "test[::10]. Kingma et al. 2016's 3.11 bits/dim is their ResNet VAE with a hierarchy of spatial "
             "latent layers, bidirectional inference and IAF, trained on 8 GPUs and evaluated with 10,000 "
             "importance samples: a single-latent-vector network is expected to stay well above it.",
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
    + [("dynamic", "burda2-ladder", "diag", None, "elbo", 1, "burda-warmup")]
    + [(data, "frey8", g, k, "elbo", 1, budget) for data, budget in (("frey-categorical", "frey8-categorical"),
                                                                     ("frey-dmol", "frey8-dmol"))
       for g, k in (("diag", None), ("iaf", 4))]
    + [("mnist-dmol", "mnist8", g, k, "elbo", 1, "mnist8") for g, k in (("diag", None), ("iaf", 4))],
    "paper": [("static", "rm", g, k, "elbo", 1, "rm") for g, k in GUIDES + [("planar", 80)]]
    + [("static", "burda", "diag", None, "iwae", 50, "burda")]
    + [("dynamic", "burda", "diag", None, obj, k, "burda") for obj in ("elbo", "iwae") for k in (1, 5, 50)]
    + [("static", "conv", g, k, "elbo", 1, "conv") for g, k in (("diag", None), ("iaf", 4))]
    + [("frey", "frey", g, k, "elbo", 1, "frey") for g, k in (("diag", None), ("planar", 4), ("iaf", 4))]
    + [("dynamic", "burda2", "diag", None, obj, k, "burda") for obj in ("elbo", "iwae") for k in (1, 5, 50)]
    + [("dynamic", "lvae", "diag", None, "elbo", 1, "lvae")]
    + [("frey-categorical", "frey8", g, k, "elbo", 1, "frey8") for g, k in (("diag", None), ("planar", 4), ("iaf", 4))]
    + [("cifar10", "cifar-resnet", g, k, "elbo", 1, "cifar") for g, k in (("diag", None), ("iaf", 4))],
}


def make_cell(data, net, guide, flows, objective, particles, budget: Budget) -> Cell:
    dataset, binarize, likelihood, *options = DATA[data]
    n = NETS[net]
    return Cell(dataset, binarize, likelihood, n.arch, n.hidden, n.activation, n.latent_dim, guide, flows, objective,
                particles, flow_hidden=n.flow_hidden if flows else None, layer_hidden=n.layer_hidden,
                inference=n.inference, batch_norm=n.batch_norm, likelihood_options=dict(options[0] if options else {}),
                arch_options=dict(n.arch_options or {}), **dataclasses.asdict(budget))


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
    return throughput.cli("nll.py", parse, run_tier, argv)


if __name__ == "__main__":
    sys.exit(main())
