"""A linear-Gaussian VAE whose marginal likelihood and posterior are known in closed form.

p(z) = N(0, I_L) and p(x|z) = N(Wz + b, sigma^2 I_D) give

    log p(x) = log N(x; b, W W^T + sigma^2 I),
    p(z|x) = N(mu(x), S),  S = (I + W^T W / sigma^2)^-1,  mu(x) = S W^T (x - b) / sigma^2,

and for any Gaussian q(z|x) = N(m, C) the ELBO is an expectation of quadratics, so it is exact too.
The model is the package's own ``VAE`` with an ``nn.Linear`` decoder; the guides here are affine in
x with a fixed covariance, which covers the exact posterior and mis-specified diagonal proposals.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_vae import objectives
from pyro_vae.guides import AmortizedGuide
from pyro_vae.models import VAE, StandardNormal

# How far, in standard errors, a Monte-Carlo estimate may stray from its expectation: at 4 a
# correct suite fails one two-sided check in about 16,000, and the errors the checks look for
# (a wrong normalization, a dropped term, a wrong beta) are much wider than that here.
TOL_SE = 4

# Nearly parallel columns make W^T W far from diagonal, so the posterior is strongly correlated
# (correlation about -0.86): a diagonal proposal is then visibly worse than the exact posterior.
W = [[1.0, 0.8], [0.5, 0.7], [-0.3, -0.1], [0.9, 1.0], [0.2, 0.5]]
B = [0.3, -0.2, 0.1, 0.0, 0.5]
SIGMA = 0.5


@pytest.fixture(autouse=True)
def float64():
    """Closed forms are compared to 1e-6, so float64; import into a test module to apply it."""
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(dtype)


class FixedScaleNormal(nn.Module):
    """p(x|z) = N(decoder(z), sigma^2 I): the likelihood interface of ``pyro_vae.models``."""

    outputs_per_pixel = 1

    def __init__(self, sigma: float):
        super().__init__()
        self.sigma = float(sigma)

    def forward(self, out: torch.Tensor) -> dist.TorchDistribution:
        return dist.Normal(out, self.sigma).to_event(1)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return out


class AffineGaussianGuide(AmortizedGuide):
    """q(z|x) = N(A x + c, C) with C fixed; a diagonal ``Normal`` when ``diagonal`` is set."""

    def __init__(self, A: torch.Tensor, c: torch.Tensor, cov: torch.Tensor, diagonal: bool = False):
        super().__init__(nn.Identity(), A.shape[0])
        if diagonal and not torch.equal(cov, torch.diag(cov.diagonal())):
            raise ValueError("a diagonal guide needs a diagonal covariance")
        self.diagonal = diagonal
        self.register_buffer("A", A.clone())
        self.register_buffer("c", c.clone())
        self.register_buffer("cov", cov.clone())

    def loc(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x) @ self.A.T + self.c

    def dist(self, x, y=None):
        if self.diagonal:
            return dist.Normal(self.loc(x), self.cov.diagonal().sqrt()).to_event(1)
        return dist.MultivariateNormal(self.loc(x), scale_tril=torch.linalg.cholesky(self.cov))

    @torch.no_grad()
    def mean(self, x, y=None, samples: int = 0):
        return self.loc(x)


class LinearGaussian:
    """Closed forms of the model p(z) p(x|z) above, in the current default dtype."""

    def __init__(self, W=W, b=B, sigma: float = SIGMA):
        dtype = torch.get_default_dtype()
        self.W = torch.as_tensor(W, dtype=dtype)
        self.b = torch.as_tensor(b, dtype=dtype)
        self.sigma = float(sigma)
        self.D, self.L = self.W.shape

    def model(self) -> VAE:
        decoder = nn.Linear(self.L, self.D)
        with torch.no_grad():
            decoder.weight.copy_(self.W)
            decoder.bias.copy_(self.b)
        return VAE(decoder, FixedScaleNormal(self.sigma), StandardNormal(self.L), self.L)

    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        """Data drawn from the model itself, with a private generator so the global seed is untouched."""
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.L, generator=g, dtype=self.W.dtype)
        eps = torch.randn(n, self.D, generator=g, dtype=self.W.dtype)
        return z @ self.W.T + self.b + self.sigma * eps

    def log_px(self, x: torch.Tensor) -> torch.Tensor:
        cov = self.W @ self.W.T + self.sigma ** 2 * torch.eye(self.D, dtype=self.W.dtype)
        return dist.MultivariateNormal(self.b, covariance_matrix=cov).log_prob(x)

    def posterior_cov(self) -> torch.Tensor:
        eye = torch.eye(self.L, dtype=self.W.dtype)
        return torch.linalg.inv(eye + self.W.T @ self.W / self.sigma ** 2)

    def posterior_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, c) with mu(x) = A x + c."""
        A = self.posterior_cov() @ self.W.T / self.sigma ** 2
        return A, -A @ self.b

    def exact_guide(self) -> AffineGaussianGuide:
        A, c = self.posterior_affine()
        return AffineGaussianGuide(A, c, self.posterior_cov())

    def diagonal_guide(self, scale: float = 1.0, shift: float = 0.0) -> AffineGaussianGuide:
        """Posterior means (plus ``shift``) and the posterior marginal std's times ``scale``:
        right marginals, wrong correlation; importance weights of finite variance for scale >= 1."""
        A, c = self.posterior_affine()
        cov = torch.diag(self.posterior_cov().diagonal()) * scale ** 2
        return AffineGaussianGuide(A, c + shift, cov, diagonal=True)

    def expected_log_lik(self, x: torch.Tensor, loc: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
        """E_q[log p(x|z)] for q = N(loc, cov), per datapoint."""
        resid = x - loc @ self.W.T - self.b
        quad = (resid ** 2).sum(-1) + torch.trace(self.W @ cov @ self.W.T)
        return -0.5 * self.D * math.log(2 * math.pi * self.sigma ** 2) - 0.5 * quad / self.sigma ** 2

    def kl_to_prior(self, loc: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
        """KL(N(loc, cov) || N(0, I)), per datapoint."""
        return 0.5 * ((loc ** 2).sum(-1) + torch.trace(cov) - self.L - torch.logdet(cov))

    def elbo(self, x: torch.Tensor, guide: AffineGaussianGuide, beta: float = 1.0) -> torch.Tensor:
        """E_q[log p(x|z)] - beta KL(q || p(z)) for an affine Gaussian guide, per datapoint."""
        loc = guide.mean(x)
        return self.expected_log_lik(x, loc, guide.cov) - beta * self.kl_to_prior(loc, guide.cov)


def fit_guide(model, guide, x: torch.Tensor, steps: int, lr: float) -> None:
    """Train ``guide`` alone by the 8-particle ELBO on ``x`` (the model's parameters are not
    updated, even those a guide shares with the model, as a ladder guide does), with Adam on a
    cosine schedule down to 0 so the last steps settle."""
    loss = objectives.loss_fn("elbo", model, guide, particles=8)
    shared = {id(p) for p in model.parameters()}
    optimizer = torch.optim.Adam([p for p in guide.parameters() if id(p) not in shared], lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    beta = torch.tensor(1.0)
    with pyro.validation_enabled(False):
        for _ in range(steps):
            optimizer.zero_grad()
            (loss(x, beta) / x.shape[0]).backward()
            optimizer.step()
            scheduler.step()
