"""Gaussian guides: the amortized base class, diagonal, full-covariance and shared-variance."""

from __future__ import annotations

from contextlib import contextmanager

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

# Keeps posterior scales strictly positive in float32 without limiting any useful fit.
MIN_SCALE = 1e-5
# Draws per chunk of a Monte-Carlo E_q[z|x] (``AmortizedGuide.mean``), for every row at once.
MEAN_CHUNK = 100


class AmortizedGuide(nn.Module):
    """q(z|x) computed from encoder features h(x) (or h(x, y): an encoder with ``uses_label``
    joins the label to the features, for models conditioned on it).

    ``dist(x, y)`` returns q(z|x) with batch shape (N,) and event shape (L,); ``forward(x, y)``
    places it at the site ``site_name`` inside the "data" plate, as the model contract asks.

    ``elements_per_sample(x)``: about how many numbers a draw and its log-density hold per particle
    and datapoint at their peak, which the evaluation adds to the model's when it sizes its chunks
    of samples. The suite's families count theirs from their own widths; 0 here, so a subclass that
    does not say is sized by the model alone, as before.
    """

    site_name = "z"  # the one latent site; its name is what the single-site fast paths read
    elements_per_sample = 0

    def __init__(self, encoder: nn.Module, latent_dim: int):
        super().__init__()
        self.encoder, self.latent_dim = encoder, latent_dim
        self._reused = None  # (x, y, h(x)) inside ``reuse_features``

    def _encode(self, x: torch.Tensor, y=None) -> torch.Tensor:
        return self.encoder(x, y) if getattr(self.encoder, "uses_label", False) else self.encoder(x)

    def features(self, x: torch.Tensor, y=None) -> torch.Tensor:
        """The encoder's h(x): computed, or the one ``reuse_features`` holds for these very tensors."""
        if self._reused is not None and self._reused[0] is x and self._reused[1] is y:
            return self._reused[2]
        return self._encode(x, y)

    @contextmanager
    def reuse_features(self, x: torch.Tensor, y=None):
        """Run the encoder once for ``x`` and reuse h(x) within the block: an importance-sampled
        estimate draws thousands of samples for the same images in chunks, and re-encoding them for
        every chunk cost about 5% of the evaluation. For no-grad use: one graph is not shared."""
        self._reused = (x, y, self._encode(x, y))
        try:
            yield
        finally:
            self._reused = None

    def dist(self, x: torch.Tensor, y=None) -> dist.TorchDistribution:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, y=None):
        with pyro.plate("data", x.shape[0]):
            return pyro.sample(self.site_name, self.dist(x, y))

    def prior_components(self, u: torch.Tensor) -> dist.TorchDistribution:
        """q(z|u) of inputs ``u`` (K, *obs_shape) as a Gaussian scorable at any z, batch shape (K,):
        the components of a VampPrior. The Gaussian families give q itself; a flow guide its base."""
        return self.dist(u)

    @torch.no_grad()
    def mean(self, x: torch.Tensor, y=None, samples: int = 1000, chunk: int = MEAN_CHUNK) -> torch.Tensor:
        """E_q[z|x]; a Monte-Carlo average unless the family knows it in closed form."""
        # The estimate's own variance, Var_q(z_i|x) / samples, adds to the active-unit statistic
        # Var_x(E_q[z_i|x]): an unused unit (q = prior, variance 1) must stay well below the 0.01
        # threshold, which 64 samples (1/64 > 0.01) did not. Drawn in chunks: a flow's per-sample
        # hypernetwork activations for all draws at once took 4.6 GB when active units were
        # counted over 500 MNIST images with 4 IAF steps.
        q = self.dist(x, y)
        total = sum(q.rsample((min(chunk, samples - i),)).sum(0) for i in range(0, samples, chunk))
        return total / samples

    @torch.no_grad()
    def moments(self, x: torch.Tensor, y=None, samples: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and per-dimension variance of q(z|x), each (N, L); Monte-Carlo unless closed form."""
        draws = self.dist(x, y).sample((samples,))
        return draws.mean(0), draws.var(0)


class DiagonalGaussian(AmortizedGuide):
    """q(z|x) = N(mu(x), diag sigma(x)^2), the mean-field guide.

    References: Kingma & Welling 2014, "Auto-Encoding Variational Bayes", arXiv:1312.6114.
    """

    def __init__(self, encoder: nn.Module, features: int, latent_dim: int):
        super().__init__(encoder, latent_dim)
        self.head = nn.Linear(features, 2 * latent_dim)

    def elements_per_sample(self, x=None) -> int:
        # the draw, its noise and the terms of its log-density: about 3 per dimension measured
        return 4 * self.latent_dim

    def loc_scale(self, x: torch.Tensor, y=None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.loc_scale_of_features(self.features(x, y))

    def loc_scale_of_features(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw = self.head(h).chunk(2, dim=-1)
        return loc, MIN_SCALE + F.softplus(raw)

    def dist(self, x, y=None):
        loc, scale = self.loc_scale(x, y)
        return dist.Normal(loc, scale).to_event(1)

    def prior_components(self, u):
        # this guide's own Gaussian, also where a subclass moves its draws further (a flow, the
        # hamiltonian dynamics): their density at arbitrary z needs an inverse (see priors.VampPrior)
        return DiagonalGaussian.dist(self, u)

    @torch.no_grad()
    def mean(self, x, y=None, samples: int = 0):
        return self.loc_scale(x, y)[0]

    @torch.no_grad()
    def moments(self, x, y=None, samples: int = 0):
        loc, scale = self.loc_scale(x, y)
        return loc, scale ** 2


class FullCovariance(AmortizedGuide):
    """q(z|x) = N(mu(x), L(x) L(x)^T) with a lower-triangular L(x) of positive diagonal.

    References: Kingma & Welling 2014, arXiv:1312.6114 (appendix: full-covariance posteriors).
    """

    def __init__(self, encoder: nn.Module, features: int, latent_dim: int):
        super().__init__(encoder, latent_dim)
        rows, cols = torch.tril_indices(latent_dim, latent_dim)
        self.register_buffer("rows", rows)
        self.register_buffer("cols", cols)
        self.register_buffer("on_diagonal", rows == cols)
        self.head = nn.Linear(features, latent_dim + rows.numel())

    def elements_per_sample(self, x=None) -> int:
        # a draw multiplies L(x) with its noise by a broadcast matmul, which copies the (L, L)
        # factor for every particle
        return self.latent_dim * (self.latent_dim + 8)

    def loc_tril(self, x, y=None):
        out = self.head(self.features(x, y))
        loc, entries = out[..., : self.latent_dim], out[..., self.latent_dim:]
        entries = torch.where(self.on_diagonal, MIN_SCALE + F.softplus(entries), entries)
        tril = entries.new_zeros(entries.shape[:-1] + (self.latent_dim, self.latent_dim))
        tril[..., self.rows, self.cols] = entries
        return loc, tril

    def dist(self, x, y=None):
        loc, tril = self.loc_tril(x, y)
        return dist.MultivariateNormal(loc, scale_tril=tril)

    @torch.no_grad()
    def mean(self, x, y=None, samples: int = 0):
        return self.loc_tril(x, y)[0]

    @torch.no_grad()
    def moments(self, x, y=None, samples: int = 0):
        loc, tril = self.loc_tril(x, y)
        return loc, tril.pow(2).sum(-1)


class ConstantVariance(AmortizedGuide):
    """q(z|x) = N(mu(x), diag sigma^2): the encoder gives only the mean; one learned variance per
    latent dimension is shared by all data.

    References: Fyffe 2019, "There and Back Again: Revisiting the Variance of VAEs",
    arXiv:1912.10309.
    """

    def __init__(self, encoder: nn.Module, features: int, latent_dim: int):
        super().__init__(encoder, latent_dim)
        self.head = nn.Linear(features, latent_dim)
        # softplus(0.5413) = 1: start at the prior's scale
        self.raw_scale = nn.Parameter(torch.full((latent_dim,), 0.5413))

    def elements_per_sample(self, x=None) -> int:
        return 4 * self.latent_dim

    def dist(self, x, y=None):
        loc = self.head(self.features(x, y))
        return dist.Normal(loc, (MIN_SCALE + F.softplus(self.raw_scale)).expand_as(loc)).to_event(1)

    @torch.no_grad()
    def mean(self, x, y=None, samples: int = 0):
        return self.head(self.features(x, y))

    @torch.no_grad()
    def moments(self, x, y=None, samples: int = 0):
        q = self.dist(x, y)
        return q.mean, q.variance
