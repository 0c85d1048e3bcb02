"""Run configuration: one dataclass, validated at the boundary, round-tripped through JSON."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from .errors import PyroVAEError
from .io import write_text_atomic

BINARIZE_CHOICES = ("dynamic", "static", "none")
DEVICE_CHOICES = ("auto", "cpu", "cuda")
SEED_MAX = 2**32 - 1  # numpy's and torch's seeds are unsigned 32-bit integers

# fields whose value is a name or a path (a config file may hold anything)
NAME_FIELDS = ("dataset", "model", "arch", "activation", "inference", "guide", "prior", "out", "device")
OPTIONAL_NAME_FIELDS = ("data_dir", "binarize", "likelihood", "objective")


def check_seed(value, flag: str = "--seed") -> int:
    """``value`` if it is an integer seed in [0, 2^32 - 1]; :class:`PyroVAEError` otherwise."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= SEED_MAX:
        raise PyroVAEError(f"{flag} must be an integer from 0 to {SEED_MAX}, got {value!r}")
    return value


@dataclass
class RunConfig:
    """Everything needed to rebuild a run's data, model, guide and optimizer.

    ``likelihood`` and ``binarize`` left as ``None`` take the dataset's defaults (see
    ``pyro_vae.data.DATASETS``), ``classes`` (of a conditional model) the number of label
    classes in the data, and ``objective`` the analytic-KL ELBO (``meanfield``) where every
    latent site of the guide has a closed-form KL to the prior, the Monte-Carlo ``elbo``
    otherwise; the resolved values are stored once training starts.
    """

    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    binarize: str | None = None
    likelihood: str | None = None
    # the likelihood's declared options (``pyro-vae train --help`` lists them)
    likelihood_options: dict = field(default_factory=dict)
    model: str = "vae"
    classes: int | None = None
    # semi-supervised models: labelled training images (None: all), the weight alpha of the
    # classification term (None: 0.1 * N_train, as Kingma et al.), and the labelled share of a batch
    labelled: int | None = None
    alpha: float | None = None
    labelled_share: float = 0.25
    arch: str = "mlp"
    # the architecture's declared options (--arch resnet: channels, blocks, downsample), positive integers
    arch_options: dict = field(default_factory=dict)
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    activation: str = "relu"
    latent_dim: int | list[int] = 8
    # several stochastic layers: latent_dim lists their sizes, the layer nearest x first
    layer_hidden: list[int] | None = None
    inference: str = "bottom-up"
    batch_norm: bool = False
    guide: str = "diag"
    guide_options: dict = field(default_factory=dict)
    prior: str = "standard"
    # the prior's declared options (vamp: pseudo_inputs; mog: components, covariance)
    prior_options: dict = field(default_factory=dict)
    objective: str | None = None
    particles: int = 1
    beta: float = 1.0
    warmup_epochs: int = 0
    epochs: int = 50
    batch_size: int = 128
    lr: float = 1e-3
    patience: int = 20
    min_scale: float = 0.01
    seed: int = 0
    device: str = "auto"
    out: str = "runs/run"
    # How the run was launched, stored because it changes the optimization: with ``distributed``
    # every step sees batch_size rows on each of ``world_size`` ranks (resolved when training
    # starts; a resumed run must be relaunched with the same world size).
    distributed: bool = False
    world_size: int = 1
    # the training step compiled with torch.compile: the same bound and the same random draws as
    # eager (to float rounding), faster where the compiler fuses what eager runs op by op
    compile: bool = False

    @property
    def latent_dims(self) -> list[int]:
        """The sizes of the stochastic layers, the one nearest x first."""
        return list(self.latent_dim) if isinstance(self.latent_dim, (list, tuple)) else [self.latent_dim]

    def validate(self) -> "RunConfig":
        """Raise :class:`PyroVAEError` on a value no run could use; return self. A one-entry
        ``latent_dim`` list becomes its entry: one stochastic layer is the plain VAE."""
        for name in NAME_FIELDS + OPTIONAL_NAME_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, str) and not (value is None and name in OPTIONAL_NAME_FIELDS):
                raise PyroVAEError(f"{name} must be a string, got {value!r}")
        check_seed(self.seed, "seed")
        if not isinstance(self.download, bool):
            raise PyroVAEError(f"download must be true or false, got {self.download!r}")
        dims = self.latent_dims
        if not dims or any(not isinstance(d, int) or isinstance(d, bool) or d <= 0 for d in dims):
            raise PyroVAEError("--latent-dim must be a positive integer or a comma-separated list of them (one per "
                               f"stochastic layer, the one nearest x first), got {self.latent_dim!r}")
        self.latent_dim = dims[0] if len(dims) == 1 else dims
        if self.layer_hidden is not None:
            if len(dims) == 1:
                raise PyroVAEError("--layer-hidden sizes the networks between latent layers, and --latent-dim "
                                   f"{dims[0]} has one layer; give --latent-dim a list such as {dims[0]},{dims[0]}")
            if not isinstance(self.layer_hidden, list) or any(
                    not isinstance(h, int) or isinstance(h, bool) or h <= 0 for h in self.layer_hidden):
                raise PyroVAEError(f"--layer-hidden must be a comma-separated list of positive integers, got "
                                   f"{self.layer_hidden!r}")
        for name in ("guide_options", "arch_options", "likelihood_options", "prior_options"):
            options = getattr(self, name)
            if not isinstance(options, dict) or any(not isinstance(k, str) for k in options):
                raise PyroVAEError(f"{name} must be a mapping of option names to values, got {options!r}")
        for key, value in self.arch_options.items():
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise PyroVAEError(f"--{key.replace('_', '-')} must be a positive integer, got {value!r}")
        if not isinstance(self.batch_norm, bool):
            raise PyroVAEError(f"batch_norm must be true or false, got {self.batch_norm!r}")
        if self.batch_norm and self.distributed:
            raise PyroVAEError("--batch-norm cannot run with --distributed: each rank would keep its own running "
                               "statistics")
        positive_ints = ("particles", "epochs", "batch_size", "patience")
        for name in positive_ints:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise PyroVAEError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if not isinstance(self.warmup_epochs, int) or self.warmup_epochs < 0:
            raise PyroVAEError(f"--warmup-epochs must be a non-negative integer, got {self.warmup_epochs!r}")
        if not isinstance(self.hidden, list) or not self.hidden or any(
                not isinstance(h, int) or isinstance(h, bool) or h <= 0 for h in self.hidden):
            raise PyroVAEError(f"--hidden must be a comma-separated list of positive integers, got {self.hidden!r}")
        for name in ("beta", "lr", "min_scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise PyroVAEError(f"--{name.replace('_', '-')} must be a positive finite number, got {value!r}")
        if self.classes is not None and (not isinstance(self.classes, int) or isinstance(self.classes, bool)
                                         or self.classes < 2):
            raise PyroVAEError(f"classes must be an integer of at least 2, got {self.classes!r}")
        if self.labelled is not None and (not isinstance(self.labelled, int) or isinstance(self.labelled, bool)
                                          or self.labelled <= 0):
            raise PyroVAEError(f"--labelled must be a positive integer, got {self.labelled!r}")
        if self.alpha is not None and (isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float))
                                       or not math.isfinite(self.alpha) or self.alpha < 0):
            raise PyroVAEError(f"--alpha must be a non-negative finite number, got {self.alpha!r}")
        share = self.labelled_share
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share < 1:
            raise PyroVAEError(f"--labelled-share must be a number strictly between 0 and 1, got {share!r}")
        if self.binarize is not None and self.binarize not in BINARIZE_CHOICES:
            raise PyroVAEError(f"unknown --binarize {self.binarize!r}; choose from {', '.join(BINARIZE_CHOICES)}")
        if not isinstance(self.compile, bool):
            raise PyroVAEError(f"compile must be true or false, got {self.compile!r}")
        if not isinstance(self.distributed, bool):
            raise PyroVAEError(f"distributed must be true or false, got {self.distributed!r}")
        size = self.world_size
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0 or (not self.distributed and size != 1):
            raise PyroVAEError(f"world_size must be 1, or a positive integer for a distributed run; got {size!r}")
        if self.device not in DEVICE_CHOICES:
            raise PyroVAEError(f"unknown --device {self.device!r}; choose from {', '.join(DEVICE_CHOICES)}")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise PyroVAEError(f"unknown config keys {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
        return cls(**data)

    def save(self, path: str | Path) -> None:
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "RunConfig":
        path = Path(path)
        if not path.is_file():
            raise PyroVAEError(f"config file not found: {path}")
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise PyroVAEError(f"config file {path} is not valid JSON: {err}") from None
        if not isinstance(data, dict):
            raise PyroVAEError(f"config file {path} must hold a JSON object")
        return cls.from_dict(data)
