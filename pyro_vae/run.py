"""Building a run's model and guide from its config, devices, and checkpoints.

A checkpoint holds everything needed to rebuild and continue a run: the config, the observation
shape, model and guide state, optimizer state, epoch, early-stopping state, metric history and
every RNG state. It is loaded with ``weights_only=True``: a checkpoint is data, never code.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyro
import torch
from torch import nn

from . import data as data_mod
from . import guides, hierarchical, likelihoods, models, nets, objectives, priors
from .config import RunConfig
from .errors import PyroVAEError
from .io import atomic_path

FORMAT = "pyro_vae.checkpoint/1"
BEST, LAST = "checkpoint.pt", "last.pt"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise PyroVAEError("--device cuda was asked for but no CUDA GPU is available to torch")
    if name not in ("cpu", "cuda"):
        raise PyroVAEError(f"unknown --device {name!r}; choose from auto, cpu, cuda")
    return torch.device(name)


def check_names(config: RunConfig) -> None:
    """Every registry name in ``config`` exists; raises before any data is read or file written."""
    data_mod.check_name(config.dataset)
    guides.check_options(config.guide, config.guide_options)
    priors.check_options(config.prior, config.prior_options)
    nets.check_options(config.arch, config.arch_options)
    check_likelihood_options(config.likelihood, config.likelihood_options)
    for registry, name in ((objectives.OBJECTIVES, config.objective), (likelihoods.LIKELIHOODS, config.likelihood)):
        if name is not None:  # None: resolved when training starts
            registry.check(name)
    for registry, name in ((models.MODELS, config.model), (priors.PRIORS, config.prior),
                           (nets.ARCHITECTURES, config.arch), (nets.ACTIVATIONS, config.activation),
                           (hierarchical.INFERENCE, config.inference)):
        registry.check(name)


def check_likelihood_options(name: str | None, options: dict) -> None:
    """``options`` are declared by the likelihood ``name``; with ``name`` None (the dataset's default,
    resolved when training starts), by some likelihood, and checked against the resolved one in
    :func:`build`."""
    registry = likelihoods.LIKELIHOODS
    if name is not None:
        nets.check_declared(registry, "--likelihood", name, options)
        return
    everywhere = registry.all_options()
    for key in options:
        if key not in everywhere:
            raise PyroVAEError(f"no likelihood takes option {key!r}"
                               + (f"; their options: {', '.join(everywhere)}" if everywhere else ""))


class Pair(nn.Module):
    """The model and guide of one run, so one state dict and one optimizer cover both."""

    def __init__(self, model: nn.Module, guide: nn.Module):
        super().__init__()
        self.model, self.guide = model, guide


def build(config: RunConfig, obs_shape: tuple) -> Pair:
    """Model and guide for ``config`` (likelihood resolved) and data of shape ``obs_shape``."""
    options = config.likelihood_options
    check_likelihood_options(config.likelihood, options)
    # only options that were given: a likelihood's defaults are its builder's own
    likelihood = (likelihoods.build(config.likelihood, obs_shape, config.min_scale, **options) if options
                  else likelihoods.build(config.likelihood, obs_shape, config.min_scale))

    def make_guide(encoder: nn.Module, features: int, latent_dim: int) -> nn.Module:
        return guides.build(config.guide, encoder, features, latent_dim, **config.guide_options)

    def make_prior(guide: nn.Module, latent_dim: int) -> nn.Module:
        # pseudo-inputs of a vamp prior stay in [0, 1] where the likelihood's data do (levels known)
        bounded = likelihoods.LIKELIHOODS[config.likelihood].meta.get("levels") is not None
        return priors.build(config.prior, latent_dim, guide=guide, obs_shape=tuple(obs_shape), bounded=bounded,
                            **config.prior_options)

    model, guide = models.MODELS[config.model].build(config, tuple(obs_shape), likelihood, make_guide, make_prior)
    return Pair(model, guide)


def make_optimizer(module: nn.Module, lr: float) -> torch.optim.Optimizer:
    """Adam over every parameter of ``module``, in torch's fused form where it has one for them.

    The fused kernel updates all parameters at once instead of looping over them in Python: the
    same update rule, and on 2 CPU cores a flow guide's training step ran 13-20% faster with it.
    """
    try:
        return torch.optim.Adam(module.parameters(), lr=lr, fused=True)
    except (RuntimeError, ValueError):  # a device or dtype without a fused kernel
        return torch.optim.Adam(module.parameters(), lr=lr)


def get_rng_state() -> dict:
    state = pyro.util.get_rng_state()
    kind, keys, pos, has_gauss, cached = state["numpy"]
    # numpy's key array becomes a tensor so the checkpoint loads with weights_only=True
    state["numpy"] = (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached)
    state["random"] = list(state["random"][1])
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate((3, tuple(state["random"]), None))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class TrainState:
    """What the training loop needs besides parameters to continue exactly where it stopped."""

    epoch: int = 0
    step: int = 0
    best_valid: float = float("-inf")
    best_epoch: int = 0
    history: list = field(default_factory=list)


def save_checkpoint(path: Path, config: RunConfig, obs_shape: tuple, pair: Pair, optimizer, state: TrainState,
                    extra: dict | None = None) -> None:
    """Write a checkpoint atomically; ``extra`` adds fields (e.g. the ranks' agreement on the state)."""
    payload = {
        "format": FORMAT,
        "config": config.to_dict(),
        "obs_shape": list(obs_shape),
        "pair": pair.state_dict(),
        "optimizer": optimizer.state_dict(),
        "train_state": {"epoch": state.epoch, "step": state.step, "best_valid": state.best_valid,
                        "best_epoch": state.best_epoch, "history": state.history},
        "rng": get_rng_state(),
        "versions": {"torch": str(torch.__version__), "pyro": str(pyro.__version__)},
        **(extra or {}),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


@dataclass
class Checkpoint:
    config: RunConfig
    obs_shape: tuple
    pair: Pair
    payload: dict

    @property
    def train_state(self) -> TrainState:
        return TrainState(**self.payload["train_state"])


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> Checkpoint:
    """Load and rebuild a run from ``path``; any unusable file raises :class:`PyroVAEError`."""
    path = Path(path)
    if not path.is_file():
        raise PyroVAEError(f"no checkpoint at {path}")
    try:
        # onto the CPU first: RNG states must stay CPU tensors whatever the run's device
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for truncated or foreign files
        raise PyroVAEError(f"{path} is not a readable checkpoint ({type(err).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise PyroVAEError(f"{path} is not a pyro_vae checkpoint (format {FORMAT})")
    try:
        config = RunConfig.from_dict(payload["config"]).validate()
        check_names(config)
        obs_shape = tuple(payload["obs_shape"])
        pair = build(config, obs_shape)
        pair.load_state_dict(payload["pair"])
    except PyroVAEError as err:
        raise PyroVAEError(f"checkpoint {path} does not fit this version of pyro_vae: {err}") from None
    except (KeyError, TypeError, RuntimeError) as err:
        raise PyroVAEError(f"checkpoint {path} does not match its own config: {str(err).splitlines()[0]}") from None
    return Checkpoint(config, obs_shape, pair.to(device), payload)


def load_run(run_dir: str | Path, device: torch.device | str = "cpu", which: str = BEST) -> Checkpoint:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PyroVAEError(f"run directory not found: {run_dir}")
    return load_checkpoint(run_dir / which, device)


def load_run_and_data(run_dir: str | Path, device, data_dir: str | None = None) -> tuple[Checkpoint, data_mod.Data]:
    """A run's best checkpoint on ``device`` and its data, checked to have the run's shape."""
    checkpoint = load_run(run_dir, device)
    return checkpoint, run_data(checkpoint, data_dir)


def run_data(checkpoint: Checkpoint, data_dir: str | None = None) -> data_mod.Data:
    """The data of a loaded run, checked to have the run's shape."""
    data = load_data(checkpoint.config, data_dir)
    if tuple(data.obs_shape) != checkpoint.obs_shape:
        raise PyroVAEError(f"data shape {data.obs_shape} differs from the run's {checkpoint.obs_shape}")
    return data


def load_data(config: RunConfig, data_dir: str | None = None) -> data_mod.Data:
    """The data of a run, with the likelihood and binarization it was trained with; for a model
    conditioned on the label, the labels are checked against its number of classes."""
    data = data_mod.load(config.dataset, data_dir if data_dir is not None else config.data_dir, config.download,
                         config.likelihood, config.binarize)
    if models.MODELS[config.model].conditional:
        found = data.classes()
        if config.classes is not None and found > config.classes:
            raise PyroVAEError(f"labels of {config.dataset} must be integers in [0, {config.classes}), "
                               f"found up to {found - 1}")
    return data
