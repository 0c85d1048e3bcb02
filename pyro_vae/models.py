"""The Pyro model p(z) p(x|z): priors and likelihoods registries, and the VAE model module.

Every sample site sits inside one ``pyro.plate("data", N)`` so bounds are per datapoint, and the
KL weight beta scales the latent site in model and guide alike (``poutine.scale``), which gives
the beta-VAE objective E_q[log p(x|z)] - beta KL(q||p).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
import torch.nn.functional as F
from pyro import poutine
from torch import nn
from torch.distributions.utils import broadcast_all

from . import nets
from .errors import PyroVAEError


class BernoulliLogits(dist.Bernoulli):
    """Pyro's Bernoulli, scored without one full-size temporary.

    torch's ``log_prob`` negates the (particles, N, pixels) cross-entropy out of place. That extra
    buffer per draw is enough for glibc to hand the large per-chunk buffers back to the kernel and
    fault them in again on every chunk of an importance-sampled NLL (one of the reasons the suite's
    estimator took 1.2x the hand-written one in benchmarks/evaluation.py). Negating in place gives
    the same number and the same gradient: the cross-entropy's backward does not read its output.
    """

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        logits, value = broadcast_all(self.logits, value)
        return F.binary_cross_entropy_with_logits(logits, value, reduction="none").neg_()


class Bernoulli(nn.Module):
    """Independent Bernoulli pixels; the decoder gives logits."""

    outputs_per_pixel = 1

    def forward(self, out: torch.Tensor) -> dist.TorchDistribution:
        return BernoulliLogits(logits=out).to_event(1)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(out)


class Gaussian(nn.Module):
    """Independent Gaussian pixels with a decoded, learned scale kept above ``min_scale``:
    a continuous density is unbounded as its scale shrinks, so the floor keeps the bound finite."""

    outputs_per_pixel = 2

    def __init__(self, min_scale: float = 0.01):
        super().__init__()
        self.min_scale = float(min_scale)

    def forward(self, out: torch.Tensor) -> dist.TorchDistribution:
        loc, raw_scale = out.chunk(2, dim=-1)
        return dist.Normal(loc, self.min_scale + F.softplus(raw_scale)).to_event(1)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return out.chunk(2, dim=-1)[0]


LIKELIHOODS = {
    "bernoulli": lambda config: Bernoulli(),
    "gaussian": lambda config: Gaussian(config.min_scale),
}


class StandardNormal(nn.Module):
    """p(z) = N(0, I)."""

    def __init__(self, latent_dim: int):
        super().__init__()
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def forward(self) -> dist.TorchDistribution:
        return dist.Normal(self.loc, self.scale).to_event(1)


class RealNVPPrior(StandardNormal):
    """A learned prior: N(0, I) pushed through K affine couplings, reversed between steps.

    The model scores guide samples under p(z), which needs log p at arbitrary z, so only flows
    with an analytic inverse qualify; affine couplings invert in one pass.

    References: Xu et al. 2019, "Learning Priors for Variational Autoencoders" / "On the
    necessity and effectiveness of learning the prior of variational auto-encoders",
    arXiv:1905.13452; Dinh et al. 2017, arXiv:1605.08803.
    """

    def __init__(self, latent_dim: int, flows: int = 4, hidden: tuple = (64, 64)):
        if latent_dim < 2:
            raise PyroVAEError("--prior realnvp needs --latent-dim of at least 2 (a coupling splits z in two)")
        super().__init__(latent_dim)
        self.couplings = nn.ModuleList(T.affine_coupling(latent_dim, hidden_dims=list(hidden)) for _ in range(flows))
        self.register_buffer("reverse", torch.arange(latent_dim - 1, -1, -1))

    def forward(self) -> dist.TorchDistribution:
        transforms = []
        for i, coupling in enumerate(self.couplings):
            if i > 0:
                transforms.append(T.Permute(self.reverse))
            transforms.append(coupling)
        return dist.TransformedDistribution(super().forward(), transforms)


PRIORS = {
    "standard": lambda config: StandardNormal(config.latent_dim),
    "realnvp": lambda config: RealNVPPrior(config.latent_dim),
}


def _lookup(table: dict, kind: str, name: str):
    if name not in table:
        raise PyroVAEError(f"unknown {kind} {name!r}; choose from {', '.join(table)}")
    return table[name]


def likelihood(name: str, config) -> nn.Module:
    return _lookup(LIKELIHOODS, "likelihood", name)(config)


def prior(name: str, config) -> nn.Module:
    return _lookup(PRIORS, "prior", name)(config)


class VAE(nn.Module):
    """The generative model: z ~ prior, x | z ~ likelihood(decoder(z))."""

    classes = 0  # label classes the model is conditioned on; none

    def __init__(self, decoder: nn.Module, likelihood: nn.Module, prior: nn.Module, latent_dim: int):
        super().__init__()
        self.decoder, self.likelihood, self.prior = decoder, likelihood, prior
        self.latent_dim = latent_dim

    @classmethod
    def build(cls, config, obs_shape: tuple, likelihood: nn.Module, prior: nn.Module):
        """(model, encoder trunk, its feature size) for ``config`` and data of shape ``obs_shape``."""
        encoder, features, decoder = nets.build(config.arch, obs_shape, config.latent_dim, config.hidden,
                                                config.activation, likelihood.outputs_per_pixel)
        return cls(decoder, likelihood, prior, config.latent_dim), encoder, features

    def forward(self, x: torch.Tensor, beta=1.0):
        with pyro.plate("data", x.shape[0]):
            with poutine.scale(scale=beta):
                z = pyro.sample("z", self.prior())
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)
        return z

    def log_terms(self, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log p(z), log p(x|z)), broadcasting the leading dimensions of z (..., L) and x (..., D):
        the densities of ``forward``'s two sites, scored outside a trace."""
        return self.prior().log_prob(z), self.likelihood(self.decoder(z)).log_prob(x)

    def log_joint(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(z) + log p(x|z), broadcasting as ``log_terms``."""
        log_prior, log_lik = self.log_terms(x, z)
        return log_prior + log_lik

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """Mean images E[x|z] for z drawn from the prior, shape (n, D)."""
        z = self.prior().sample((n,))
        return self.likelihood.mean(self.decoder(z))

    @torch.no_grad()
    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        return self.likelihood.mean(self.decoder(z))

    @torch.no_grad()
    def reconstruct(self, guide, x: torch.Tensor) -> torch.Tensor:
        """E[x|z] for one z ~ q(z|x) per row of ``x``."""
        return self.decode_mean(guide.dist(x).sample())

    def images(self, x: torch.Tensor) -> torch.Tensor:
        """The pixels of observations ``x``, as drawn and scored."""
        return x


class LabelledEncoder(nn.Module):
    """Features of a labelled row [pixels | one-hot y]: the encoder trunk's h(pixels) joined with y,
    so every guide head and flow hypernetwork is conditioned on the label as well."""

    def __init__(self, trunk: nn.Module, pixels: int):
        super().__init__()
        self.trunk, self.pixels = trunk, pixels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.trunk(x[..., : self.pixels]), x[..., self.pixels:]], -1)


class ConditionalVAE(VAE):
    """A VAE conditioned on a class label: z ~ p(z), x | z, y ~ likelihood(decoder(z, y)), with the
    guide q(z|x, y). The bounds it reports are of log p(x|y).

    Observations are rows [pixels | one-hot y] (``pyro_vae.data.Data.with_labels``), so the
    objectives, evaluation and the training loop handle a labelled batch like any other; the
    model scores the pixels only.

    References: Kingma, Rezende, Mohamed & Welling 2014, "Semi-Supervised Learning with Deep
    Generative Models" (model M2 with observed labels), arXiv:1406.5298; Sohn, Lee & Yan 2015,
    "Learning Structured Output Representation using Deep Conditional Generative Models" (NeurIPS).
    """

    def __init__(self, decoder, likelihood, prior, latent_dim: int, classes: int):
        super().__init__(decoder, likelihood, prior, latent_dim)
        self.classes = classes

    @classmethod
    def build(cls, config, obs_shape, likelihood, prior):
        if not config.classes or config.classes < 2:
            raise PyroVAEError(f"--model cvae needs at least 2 label classes, got {config.classes!r}")
        encoder, features, decoder = nets.build(config.arch, obs_shape, config.latent_dim + config.classes,
                                                config.hidden, config.activation, likelihood.outputs_per_pixel)
        model = cls(decoder, likelihood, prior, config.latent_dim, config.classes)
        return model, LabelledEncoder(encoder, math.prod(obs_shape)), features + config.classes

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x[..., : -self.classes], x[..., -self.classes:]

    def _decode(self, z: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        lead = torch.broadcast_shapes(z.shape[:-1], onehot.shape[:-1])
        return self.decoder(torch.cat([z.expand(lead + z.shape[-1:]), onehot.expand(lead + onehot.shape[-1:])], -1))

    def forward(self, x: torch.Tensor, beta=1.0):
        pixels, onehot = self._split(x)
        with pyro.plate("data", x.shape[0]):
            with poutine.scale(scale=beta):
                z = pyro.sample("z", self.prior())
            pyro.sample("x", self.likelihood(self._decode(z, onehot)), obs=pixels)
        return z

    def log_terms(self, x, z):
        pixels, onehot = self._split(x)
        return self.prior().log_prob(z), self.likelihood(self._decode(z, onehot)).log_prob(pixels)

    def onehot(self, labels: torch.Tensor) -> torch.Tensor:
        labels = torch.as_tensor(labels, device=self.prior.loc.device)
        if labels.dtype.is_floating_point or labels.min() < 0 or labels.max() >= self.classes:
            raise PyroVAEError(f"labels must be integers in [0, {self.classes}); got values from "
                               f"{labels.min().item()} to {labels.max().item()}")
        return F.one_hot(labels, self.classes).to(self.prior.loc.dtype)

    @torch.no_grad()
    def sample(self, n: int, labels=None) -> torch.Tensor:
        """Mean images E[x|z, y] for z from the prior and the given ``labels`` (n,); by default
        the classes in turn, 0, 1, ..., so a grid of ``classes`` columns shows one class per column."""
        labels = torch.arange(n) % self.classes if labels is None else labels
        return self.decode_mean(self.prior().sample((n,)), labels)

    @torch.no_grad()
    def decode_mean(self, z: torch.Tensor, labels=None) -> torch.Tensor:
        labels = torch.arange(z.shape[-2] if z.dim() > 1 else 1) % self.classes if labels is None else labels
        return self.likelihood.mean(self._decode(z, self.onehot(labels)))

    @torch.no_grad()
    def reconstruct(self, guide, x):
        return self.likelihood.mean(self._decode(guide.dist(x).sample(), self._split(x)[1]))

    def images(self, x):
        return self._split(x)[0]


@dataclass
class ModelSpec:
    cls: type
    conditional: bool
    about: str


MODELS = {
    "vae": ModelSpec(VAE, False, "p(z) p(x|z) with the guide q(z|x)"),
    "cvae": ModelSpec(ConditionalVAE, True, "p(z) p(x|z, y) conditioned on the class label y, guide q(z|x, y)"),
}


def model_spec(name: str) -> ModelSpec:
    return _lookup(MODELS, "model", name)
