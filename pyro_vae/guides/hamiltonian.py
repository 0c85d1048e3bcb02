"""The Hamiltonian VAE's guide: draws of a diagonal Gaussian moved by K leapfrog steps along the
gradient of the model's own log p(x, z), with tempering of the momentum.

z_0 ~ q_0(z|x) = N(mu(x), diag sigma(x)^2) (the diagonal guide on the encoder), momentum
rho_0 ~ N(0, I / beta_0), then K times

    rho <- rho + (eps / 2) * grad_z log p(x, z);  z <- z + eps * rho;  rho <- rho + (eps / 2) * grad_z log p(x, z)
    rho <- sqrt(beta_{k-1} / beta_k) * rho          (tempering; beta_K = 1)

with learned step sizes eps_k > 0, one per step and dimension. Each leapfrog step preserves
volume and the tempering steps together scale it by beta_0^(d/2), so the density of (z_K, rho_K) is
q_0(z_0|x) N(rho_0; 0, I / beta_0) beta_0^(-d/2), and

    ELBO = E[log p(x, z_K) + log N(rho_K; 0, I) - log q_0(z_0|x) - log N(rho_0; 0, I / beta_0) + (d/2) log beta_0],

the ELBO of the extended target p(x, z) N(rho; 0, I), whose marginal in x is p(x): a bound on
log p(x), and its importance weights are unbiased estimates of p(x). The guide places z_K at its
site with that log-density for z alone (log q_0 + log N(rho_0) - (d/2) log beta_0 - log N(rho_K)),
so every objective, ``evaluate`` and the diagnostics read the extended bound and its weights
through the model contract unchanged.

log p(x, z) is the model's own, scored through its Pyro trace (``contract.log_joint``) with the
leapfrog's z; the guide holds the model by reference. Tempering schedules (``TEMPERING``), as the
authors' code (github.com/anthonycaterini/hvae-nips) has them: none (beta_k = 1); fixed (the
temperatures T_k = 1 / beta_k quadratic in k from T_0 = 1 / beta_0 down to T_K = 1, beta_0 given
and held); learned (the same schedule, beta_0 in (0, 1) learned); free (every step's rescaling
alpha_k = sqrt(beta_{k-1} / beta_k) in (0, 1) learned). The momentum only ever cools.

Step sizes are one vector per leapfrog step (the authors' ``--vary_eps``), positive through a
softplus. On the linear-Gaussian model of the tests (a posterior of correlation -0.86), after 500
steps at K = 5: one vector shared by the steps closed 14% of the diagonal guide's KL gap, one per
step 98% (learned tempering); steps bounded below 0.5 by a sigmoid, as the authors' code bounds
them, 67% — the sigmoid's small slope slowed their learning (a map of leapfrog shears along the
coordinate axes needs steps of different lengths to turn a diagonal Gaussian into a correlated one).

References: Caterini, Doucet & Sejdinovic 2018, "Hamiltonian Variational Auto-Encoder",
arXiv:1805.11328; Salimans, Kingma & Welling 2015, arXiv:1410.6460.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro import poutine
from torch import nn

from ..errors import PyroVAEError
from .base import AmortizedGuide, DiagonalGaussian

TEMPERING = ("none", "fixed", "learned", "free")


def check_options(leapfrog=5, tempering="learned", step_size=0.1, beta0=0.5, **_) -> None:
    """Raise :class:`PyroVAEError` on option values the guide cannot take (before anything is trained)."""
    if tempering not in TEMPERING:
        raise PyroVAEError(f"--tempering must be one of {', '.join(TEMPERING)}, got {tempering!r}")
    if not isinstance(leapfrog, int) or isinstance(leapfrog, bool) or leapfrog < 0:
        raise PyroVAEError(f"--leapfrog must be a non-negative integer, got {leapfrog!r}")
    if isinstance(step_size, bool) or not (isinstance(step_size, (int, float)) and 0 < step_size < math.inf):
        raise PyroVAEError(f"--step-size must be a positive number, got {step_size!r}")
    if isinstance(beta0, bool) or not (isinstance(beta0, (int, float)) and 0 < beta0 <= 1):
        raise PyroVAEError(f"--beta0 must be in (0, 1], got {beta0!r}")


def leapfrog(z: torch.Tensor, rho: torch.Tensor, eps: torch.Tensor, grad, g: torch.Tensor | None = None):
    """One leapfrog step of the Hamiltonian log p(z) - |rho|^2 / 2 with per-dimension step ``eps``;
    ``grad(z)`` is grad_z log p, ``g`` its value at ``z`` when known. Returns (z, rho, grad at the
    new z): a step costs one gradient."""
    g = grad(z) if g is None else g
    rho = rho + 0.5 * eps * g
    z = z + eps * rho
    g = grad(z)
    return z, rho + 0.5 * eps * g, g


def temperatures(beta0: torch.Tensor, steps: int) -> torch.Tensor:
    """T_k = 1 / beta_k, k = 0..K, of the quadratic schedule (the authors' code):
    (1 - T_0) k^2 / K^2 + T_0, from T_0 = 1 / beta_0 down to 1."""
    k = torch.arange(steps + 1, dtype=beta0.dtype, device=beta0.device)
    start = 1 / beta0
    return (1 - start) * (k / steps) ** 2 + start


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


class HamiltonianGuide(DiagonalGaussian):
    """q_0 on the encoder, then ``leapfrog`` steps of Hamiltonian dynamics on the attached model's
    log p(x, z) (see the module docstring). ``attach(model)`` is called by the model's builder."""

    jit_compatible = False  # torch.jit cannot trace the autograd.grad of the leapfrog steps
    extended_space = True  # its weights are those of (z, rho): diagnostics say so

    def __init__(self, encoder: nn.Module, features: int, latent_dim: int, leapfrog: int = 5,
                 tempering: str = "learned", step_size: float = 0.1, beta0: float = 0.5):
        super().__init__(encoder, features, latent_dim)
        check_options(leapfrog, tempering, step_size, beta0)
        self.steps, self.tempering = leapfrog, tempering
        # softplus^-1 of the initial step size, one per step and dimension
        self.raw_step = nn.Parameter(torch.full((max(leapfrog, 1), latent_dim), math.log(math.expm1(step_size))))
        # beta_0 as a logit (1 held just below: its logit is infinite), and for free tempering the
        # logits of alpha_k = sqrt(T_k / T_{k-1}) of the quadratic schedule from it
        start = min(float(beta0), 1 - 1e-6)
        raw_beta0 = torch.tensor(_logit(start))
        t = temperatures(torch.tensor(start, dtype=torch.float64), max(leapfrog, 1))
        raw_alpha = torch.tensor([_logit(min(float(a), 1 - 1e-6)) for a in (t[1:] / t[:-1]).sqrt()])
        self.register_buffer("held_beta0", raw_beta0)  # fixed: the beta_0 given
        self.raw_beta0 = nn.Parameter(raw_beta0.clone()) if tempering == "learned" else None
        self.raw_alpha = nn.Parameter(raw_alpha) if tempering == "free" else None
        self.exact_one = tempering == "none" or leapfrog == 0 or (tempering == "fixed" and beta0 == 1)
        self.__dict__["_model"] = None  # by reference: the model's parameters are the model's

    def attach(self, model: nn.Module) -> None:
        """The model whose log p(x, z) drives the dynamics."""
        self.__dict__["_model"] = model

    def elements_per_sample(self, x) -> int:
        """Numbers a draw holds per particle and datapoint: the leapfrog's z, rho, gradient and their
        updates, and for each gradient the model's forward pass kept for its backward pass and as
        many again in the backward: twice what the model's scoring holds."""
        if not self.steps or self._model is None:
            return super().elements_per_sample(x)
        from ..evaluate import model_elements  # the evaluation imports the guides

        return 8 * self.latent_dim + 2 * model_elements(self._model, x)

    def step_sizes(self) -> torch.Tensor:
        """(K, d): the leapfrog step sizes of each step."""
        return F.softplus(self.raw_step)

    def log_alphas(self) -> torch.Tensor:
        """(K,): log of the momentum's rescaling sqrt(beta_{k-1} / beta_k) after each step, each <= 0
        (exactly 0 without tempering)."""
        if self.exact_one:
            return torch.zeros(self.steps, dtype=self.raw_step.dtype, device=self.raw_step.device)
        if self.tempering == "free":
            return F.logsigmoid(self.raw_alpha[: self.steps])
        raw = self.raw_beta0 if self.tempering == "learned" else self.held_beta0
        t = temperatures(torch.sigmoid(raw), self.steps)
        return 0.5 * (t[1:] / t[:-1]).log()

    def beta0(self) -> torch.Tensor:
        """The initial inverse temperature prod_k alpha_k^2 <= 1 (beta_K = 1); 1 without steps."""
        return (2 * self.log_alphas().sum()).exp()

    def _grad_log_joint(self, x: torch.Tensor, y, keep_graph: bool):
        from .. import contract

        model = self._model
        if model is None:
            raise PyroVAEError("the hamiltonian guide has no model attached (guide.attach(model))")
        name = self.site_name

        # eager under --compile: the step differentiates this gradient again, and torch.compile's
        # graphs (aot_autograd) have no double backward
        @torch.compiler.disable
        def grad(z):
            with torch.enable_grad(), poutine.block():  # the inner trace is the dynamics', not the guide's
                z_in = z if z.requires_grad else z.detach().requires_grad_()
                # the model's own log p(x, z), its data plate over the last batch dimension
                log_p = contract.log_joint(model, x, {name: z_in}, y, shape_check=False)
                (g,) = torch.autograd.grad(log_p.sum(), z_in, create_graph=keep_graph)
            return g if keep_graph else g.detach()

        return grad

    def draw(self, x: torch.Tensor, y=None, sample_shape=torch.Size()) -> tuple[torch.Tensor, torch.Tensor]:
        """(z_K, log-density of z_K in the extended bound), each of batch shape sample_shape + (N,)."""
        loc, scale = self.loc_scale(x, y)
        q0 = dist.Normal(loc, scale).to_event(1)
        z = q0.rsample(sample_shape)
        log_q = q0.log_prob(z)
        gamma = torch.randn_like(z)
        log_alphas = self.log_alphas()
        rho = gamma * (-log_alphas.sum()).exp()  # rho_0 ~ N(0, I / beta_0)
        # log N(rho_0; 0, I / beta_0) - (d / 2) log beta_0 = log N(gamma; 0, I): the beta_0 terms cancel,
        # and beta_0 acts through the dynamics alone
        log_q = log_q + dist.Normal(0.0, 1.0).log_prob(gamma).sum(-1)
        if self.steps:
            eps, alphas = self.step_sizes(), log_alphas.exp()
            grad = self._grad_log_joint(x, y, keep_graph=torch.is_grad_enabled())
            g = None
            for k in range(self.steps):
                z, rho, g = leapfrog(z, rho, eps[k], grad, g)
                rho = rho * alphas[k]
        log_q = log_q - dist.Normal(0.0, 1.0).log_prob(rho).sum(-1)
        return z, log_q

    def dist(self, x, y=None):
        return HamiltonianDraws(self, x, y)

    def forward(self, x: torch.Tensor, y=None):
        # the dynamics run before the data plate opens: they trace the model, whose own data plate
        # could not open inside the guide's; the enclosing plates (a particle plate) give the shape
        outer = sorted((f for f in poutine.runtime.get_plates() if f.size is not None), key=lambda f: f.dim)
        shape = tuple(f.size for f in outer if f.dim < -1)
        z, log_q = self.draw(x, y, torch.Size(shape))
        with pyro.plate("data", x.shape[0]):
            return pyro.sample(self.site_name, dist.Delta(z, log_density=log_q, event_dim=1))

    # the closed forms of the base do not hold after the dynamics
    mean = AmortizedGuide.mean
    moments = AmortizedGuide.moments


class HamiltonianDraws(dist.TorchDistribution):
    """q(z|x) of the Hamiltonian guide as a distribution: ``rsample`` runs the dynamics, and
    ``log_prob`` scores only the draws it made last (the extended bound's log-density of z), as a
    flow without an inverse does."""

    arg_constraints = {}
    support = dist.constraints.real_vector
    has_rsample = True

    def __init__(self, guide: HamiltonianGuide, x: torch.Tensor, y=None):
        self.guide, self.x, self.y = guide, x, y
        self._cache = None
        super().__init__(torch.Size((x.shape[0],)), torch.Size((guide.latent_dim,)), validate_args=False)

    def rsample(self, sample_shape=torch.Size()):
        z, log_q = self.guide.draw(self.x, self.y, torch.Size(sample_shape))
        self._cache = (z, log_q)
        return z

    def sample(self, sample_shape=torch.Size()):
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value):
        if self._cache is None or value is not self._cache[0]:
            raise PyroVAEError("the hamiltonian guide scores only its own latest draws (its density at other "
                               "points would need the dynamics run backwards from them)")
        return self._cache[1]
