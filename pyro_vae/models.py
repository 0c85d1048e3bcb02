"""The Pyro model p(z) p(x|z): priors and likelihoods registries, and the VAE model module.

Every sample site sits inside one ``pyro.plate("data", N)`` so bounds are per datapoint, and the
KL weight beta scales the latent site in model and guide alike (``poutine.scale``), which gives
the beta-VAE objective E_q[log p(x|z)] - beta KL(q||p).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro import poutine
from torch import nn

from .errors import PyroVAEError


class Bernoulli(nn.Module):
    """Independent Bernoulli pixels; the decoder gives logits."""

    outputs_per_pixel = 1

    def forward(self, out: torch.Tensor) -> dist.TorchDistribution:
        return dist.Bernoulli(logits=out).to_event(1)

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


PRIORS = {"standard": lambda config: StandardNormal(config.latent_dim)}


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

    def __init__(self, decoder: nn.Module, likelihood: nn.Module, prior: nn.Module, latent_dim: int):
        super().__init__()
        self.decoder, self.likelihood, self.prior = decoder, likelihood, prior
        self.latent_dim = latent_dim

    def forward(self, x: torch.Tensor, beta=1.0):
        with pyro.plate("data", x.shape[0]):
            with poutine.scale(scale=beta):
                z = pyro.sample("z", self.prior())
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)
        return z

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """Mean images E[x|z] for z drawn from the prior, shape (n, D)."""
        z = self.prior().sample((n,))
        return self.likelihood.mean(self.decoder(z))

    @torch.no_grad()
    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        return self.likelihood.mean(self.decoder(z))
