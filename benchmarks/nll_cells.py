"""The cells and tiers of ``nll.py``: what one cell trains and evaluates, and which cells each tier declares.

``TIERS`` (smoke, standard, paper) combines small tables: ``DATA`` (dataset, binarization and
likelihood, the 8-bit Frey, MNIST and CIFAR-10 data among them), ``NETS``, each tier's ``BUDGETS``
and the ``ROWS`` that pair them, through ``make_cell``. ``NEEDS`` names the datasets that are not on
every machine, ``THREADS`` each tier's torch threads and ``ABOUT`` what each tier is for.

Kept apart from the runner, the results lines and the command line (``nll.py``, which re-exports
these names) and from the published figures and the table (``nll_table.py``).
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path

from pyro_vae import datasets_images
from pyro_vae.config import RunConfig
from pyro_vae.guides import GUIDES
from pyro_vae.likelihoods import LIKELIHOODS
from pyro_vae.nets import ARCHITECTURES

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling modules, however this is run
import nll_table  # noqa: E402  (the published figures of a cell's setting: Cell.anchors)


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
        # ``flows`` counts the guide's steps: flow steps, or the hamiltonian guide's leapfrog steps
        steps = "leapfrog" if "leapfrog" in GUIDES[self.guide].options() else "flows"
        options = {} if self.flows is None else {steps: self.flows}
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
        # the Hamiltonian guide trains at the flows' budget; its importance samples each run the
        # leapfrog steps with gradients of log p(x, z) (2 at K = 1), so 500 of them, not 5000, keep
        # the K = 1 cell's evaluation to minutes: an NLL a little less tight than the others'
        "rm-hamiltonian": Budget(epochs=100, batch_size=100, test_stride=5, iw_samples=500),
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

ROW_GUIDES = [("diag", None), ("full", None), ("planar", 4), ("radial", 4), ("coupling", 4), ("iaf", 4)]
# the Hamiltonian VAE (Caterini et al. 2018) beside the flows at the same budget: K leapfrog steps
HAMILTONIAN = [("hamiltonian", k) for k in (1, 5, 10)]
# rows: (data, net, guide, flows, objective, particles, budget)
ROWS = {
    "smoke": [("digits", "small", g, k, "elbo", 1, "digits") for g, k in ROW_GUIDES]
    + [("digits", "small", "diag", None, "iwae", 5, "digits")],
    "standard": [("static", "rm", g, k, "elbo", 1, "rm") for g, k in ROW_GUIDES]
    + [("static", "rm", g, k, "elbo", 1, "rm-hamiltonian") for g, k in HAMILTONIAN]
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
    "paper": [("static", "rm", g, k, "elbo", 1, "rm") for g, k in ROW_GUIDES + [("planar", 80)] + HAMILTONIAN]
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
    hypernetworks = flows and "flow_hidden" in GUIDES[guide].options()
    return Cell(dataset, binarize, likelihood, n.arch, n.hidden, n.activation, n.latent_dim, guide, flows, objective,
                particles, flow_hidden=n.flow_hidden if hypernetworks else None, layer_hidden=n.layer_hidden,
                inference=n.inference, batch_norm=n.batch_norm, likelihood_options=dict(options[0] if options else {}),
                arch_options=dict(n.arch_options or {}), **dataclasses.asdict(budget))


TIERS: dict[str, list[Cell]] = {tier: [make_cell(*row[:-1], BUDGETS[tier][row[-1]]) for row in rows]
                                for tier, rows in ROWS.items()}
for _tier, _cells in TIERS.items():
    assert len({c.id for c in _cells}) == len(_cells), f"two cells of tier {_tier} share an id"
