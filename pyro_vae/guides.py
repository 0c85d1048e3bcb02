"""Amortized guides q(z|x), registered by name.

A guide owns the encoder trunk (x -> h(x)) and the heads that turn h(x) into the parameters of
q(z|x). ``dist(x)`` returns q(z|x) as a distribution with batch shape (N,) and event shape (L,);
``forward`` places it at the site "z" inside the "data" plate, scaled by the KL weight beta like
the model's prior site.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro import poutine
from torch import nn

from .errors import PyroVAEError

# Keeps posterior scales strictly positive in float32 without limiting any useful fit.
MIN_SCALE = 1e-5


class AmortizedGuide(nn.Module):
    def __init__(self, encoder: nn.Module, latent_dim: int):
        super().__init__()
        self.encoder, self.latent_dim = encoder, latent_dim

    def dist(self, x: torch.Tensor) -> dist.TorchDistribution:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, beta=1.0):
        with pyro.plate("data", x.shape[0]):
            with poutine.scale(scale=beta):
                return pyro.sample("z", self.dist(x))

    @torch.no_grad()
    def mean(self, x: torch.Tensor, samples: int = 64) -> torch.Tensor:
        """E_q[z|x]; a Monte-Carlo average unless the family knows it in closed form."""
        return self.dist(x).rsample((samples,)).mean(0)


class DiagonalGaussian(AmortizedGuide):
    """q(z|x) = N(mu(x), diag sigma(x)^2), the mean-field guide of Kingma & Welling.

    References: Kingma & Welling 2014, "Auto-Encoding Variational Bayes", arXiv:1312.6114.
    """

    def __init__(self, encoder: nn.Module, features: int, latent_dim: int):
        super().__init__(encoder, latent_dim)
        self.head = nn.Linear(features, 2 * latent_dim)

    def loc_scale(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw = self.head(self.encoder(x)).chunk(2, dim=-1)
        return loc, MIN_SCALE + F.softplus(raw)

    def dist(self, x):
        loc, scale = self.loc_scale(x)
        return dist.Normal(loc, scale).to_event(1)

    @torch.no_grad()
    def mean(self, x, samples: int = 0):
        return self.loc_scale(x)[0]


@dataclass
class GuideSpec:
    build: Callable[..., AmortizedGuide]
    about: str
    reference: str


GUIDES: dict[str, GuideSpec] = {
    "diag": GuideSpec(
        lambda encoder, features, latent_dim, **options: DiagonalGaussian(encoder, features, latent_dim),
        "mean-field Gaussian N(mu(x), diag sigma(x)^2)",
        "Kingma & Welling 2014, arXiv:1312.6114",
    ),
}


def check_name(name: str) -> GuideSpec:
    if name not in GUIDES:
        raise PyroVAEError(f"unknown guide {name!r}; choose from {', '.join(GUIDES)}")
    return GUIDES[name]


def build(name: str, encoder: nn.Module, features: int, latent_dim: int, **options) -> AmortizedGuide:
    """Build the guide registered as ``name`` on top of ``encoder`` (features -> latent_dim)."""
    return check_name(name).build(encoder, features, latent_dim, **options)
