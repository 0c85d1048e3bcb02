"""Priors p(z) registry.

A prior is a module whose call returns the distribution of one latent site (batch shape (),
event shape (L,)). It is built with the modules it may need, ``guide`` among them (a VampPrior
mixes the guide's q(z|u) over learned pseudo-inputs), not from the config alone; nothing
outside a prior reads its internals: callers draw from it and score under it.

A prior's log-density at S x N draws may cost more than the draws themselves (a mixture of K
components holds S x N x K x L numbers); ``elements_per_sample`` says how many it holds per
draw, and the evaluation sizes its chunks by it.
"""

from __future__ import annotations

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
import torch.nn.functional as F
from torch import nn

from .errors import PyroVAEError
from .registry import Option, Registry


class StandardNormal(nn.Module):
    """p(z) = N(0, I)."""

    elements_per_sample = 0

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


def _uniform_mixture(components: dist.TorchDistribution, logits: torch.Tensor | None = None):
    k = components.batch_shape[-1]
    logits = logits if logits is not None else components.mean.new_zeros(k)
    return dist.MixtureSameFamily(dist.Categorical(logits=logits), components)


class MixturePrior(nn.Module):
    """p(z) = sum_k pi_k N(z; mu_k, Sigma_k), every part learned: diagonal Sigma_k, or full
    (``covariance="full"``, a Cholesky factor with a positive diagonal), the form ``refit-prior
    --prior gmm`` fits to a trained model's codes.

    The means start spread as draws of N(0, I) and the scales at 1, so at the start the prior is
    close to N(0, I) smeared over K places, not K copies of one Gaussian.

    References: Dilokthanakul et al. 2016, "Deep Unsupervised Clustering with Gaussian Mixture
    Variational Autoencoders", arXiv:1611.02648; Tomczak & Welling 2018, arXiv:1705.07120 (the
    mixture prior as a baseline).
    """

    def __init__(self, latent_dim: int, components: int = 10, covariance: str = "diag"):
        super().__init__()
        self.covariance = covariance
        self.loc = nn.Parameter(torch.randn(components, latent_dim))
        self.logits = nn.Parameter(torch.zeros(components))
        # softplus(0.5413) = 1
        self.raw_scale = nn.Parameter(torch.full((components, latent_dim), 0.5413))
        if covariance == "full":
            rows, cols = torch.tril_indices(latent_dim, latent_dim, offset=-1)
            self.register_buffer("rows", rows)
            self.register_buffer("cols", cols)
            self.off_diagonal = nn.Parameter(torch.zeros(components, rows.numel()))
        self.elements_per_sample = 2 * components * latent_dim * (latent_dim if covariance == "full" else 1)

    def scale_tril(self) -> torch.Tensor:
        tril = torch.diag_embed(1e-5 + F.softplus(self.raw_scale))
        if self.covariance == "full":
            below = torch.zeros_like(tril)
            below[:, self.rows, self.cols] = self.off_diagonal
            tril = tril + below
        return tril

    def set_parameters(self, weights: torch.Tensor, loc: torch.Tensor, scale_tril: torch.Tensor) -> None:
        """Set the mixture to the given weights (K,), means (K, L) and Cholesky factors (K, L, L)
        (diagonal ones where the covariance is diagonal): the fitted density of ``refit-prior``."""
        with torch.no_grad():
            self.logits.copy_(weights.log())
            self.loc.copy_(loc)
            diagonal = torch.diagonal(scale_tril, dim1=-2, dim2=-1).clamp_min(2e-5) - 1e-5
            self.raw_scale.copy_(diagonal + torch.log(-torch.expm1(-diagonal)))  # softplus^-1
            if self.covariance == "full":
                self.off_diagonal.copy_(scale_tril[:, self.rows, self.cols])

    def forward(self) -> dist.TorchDistribution:
        if self.covariance == "full":
            components = dist.MultivariateNormal(self.loc, scale_tril=self.scale_tril())
        else:
            components = dist.Normal(self.loc, 1e-5 + F.softplus(self.raw_scale)).to_event(1)
        return _uniform_mixture(components, self.logits)


class VampPrior(nn.Module):
    """The VampPrior: p(z) = (1/K) sum_k q(z | u_k), the guide's own encoder at K learned
    pseudo-inputs u_k (images of the observation's shape).

    The components are the guide's Gaussian q(z|u) (``guide.prior_components``): the posterior
    itself for the Gaussian families, the base Gaussian of a flow guide (a flow's density at the
    model's z would need its inverse, which planar and radial flows lack and IAF and spline flows
    compute in L sequential passes, for each of the K components), and for several latent layers
    the top layer's q(z_L | u) along the means of the layers below. The guide is held by reference,
    not as a submodule: its parameters belong to the guide, and gradients of the prior reach them
    as the paper's do. Pseudo-inputs of data in [0, 1] (``bounded``) are a sigmoid of their
    parameters, as the paper keeps them in the data's range (there with a hard tanh).

    References: Tomczak & Welling 2018, "VAE with a VampPrior", arXiv:1705.07120.
    """

    def __init__(self, latent_dim: int, guide: nn.Module, obs_shape: tuple, pseudo_inputs: int = 500,
                 bounded: bool = True):
        super().__init__()
        # the semi-supervised guide keeps its q(z|x, y) as z_guide
        encoder = getattr(guide, "encoder", None) or getattr(getattr(guide, "z_guide", None), "encoder", None)
        if getattr(encoder, "uses_label", False):
            raise PyroVAEError("--prior vamp needs q(z|u) of an input alone, and this guide's q(z|x, y) takes the "
                               "label too; use --prior mog or realnvp with models that take labels")
        if guide is None or not callable(getattr(guide, "prior_components", None)):
            raise PyroVAEError("--prior vamp mixes the guide's q(z|u) over pseudo-inputs, and this guide has no "
                               "prior_components(u) to give it")
        self.latent_dim, self.bounded = latent_dim, bounded
        self.__dict__["_guide"] = guide  # by reference: see the class docstring
        # around 0.5 (grey) for bounded data, around 0 otherwise, with a little spread to break symmetry
        self.pseudo = nn.Parameter(0.01 * torch.randn(pseudo_inputs, *obs_shape))
        self.elements_per_sample = 2 * pseudo_inputs * latent_dim

    def pseudo_inputs(self) -> torch.Tensor:
        return torch.sigmoid(self.pseudo) if self.bounded else self.pseudo

    def forward(self) -> dist.TorchDistribution:
        components = self._guide.prior_components(self.pseudo_inputs())
        if tuple(components.event_shape) != (self.latent_dim,):
            raise PyroVAEError(f"the guide's prior_components give events of shape {tuple(components.event_shape)}, "
                               f"not ({self.latent_dim},)")
        return _uniform_mixture(components)


def _standard(latent_dim: int, guide=None, obs_shape=None, bounded=False) -> StandardNormal:
    return StandardNormal(latent_dim)


def _realnvp(latent_dim: int, guide=None, obs_shape=None, bounded=False) -> RealNVPPrior:
    return RealNVPPrior(latent_dim)


COVARIANCES = ("diag", "full")


def _mog(latent_dim: int, guide=None, obs_shape=None, bounded=False, components: int = 10,
         covariance: str = "diag") -> MixturePrior:
    return MixturePrior(latent_dim, components, covariance)


def _vamp(latent_dim: int, guide=None, obs_shape=None, bounded=True, pseudo_inputs: int = 500) -> VampPrior:
    if obs_shape is None:
        raise PyroVAEError("--prior vamp needs the observation's shape for its pseudo-inputs")
    return VampPrior(latent_dim, guide, tuple(obs_shape), pseudo_inputs, bounded)


PRIORS = Registry("prior")
PRIORS.add("standard", _standard, "N(0, I)")
PRIORS.add("realnvp", _realnvp, "N(0, I) through 4 learned affine couplings (a learned flow prior)",
           reference="Xu et al. 2019, arXiv:1905.13452")
PRIORS.add("mog", _mog, "learned mixture of Gaussians (diagonal, or full --covariance)",
           {"components": "mog: mixture components K",
            "covariance": Option("diag", "mog: diag or full covariance of each component")},
           reference="Dilokthanakul et al. 2016, arXiv:1611.02648")
PRIORS.add("vamp", _vamp, "VampPrior: mixture of the guide's q(z|u_k) over learned pseudo-inputs u_k",
           {"pseudo_inputs": "vamp: learned pseudo-inputs K"}, reference="Tomczak & Welling 2018, arXiv:1705.07120")


def check_options(name: str, options: dict) -> dict:
    """The options of prior ``name`` with its defaults filled in; raises on an unknown option or
    a value no prior could use."""
    options = PRIORS.check_options(name, options)
    for key in ("components", "pseudo_inputs"):
        value = options.get(key)
        if key in options and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
            raise PyroVAEError(f"--{key.replace('_', '-')} must be a positive integer, got {value!r}")
    if "covariance" in options and options["covariance"] not in COVARIANCES:
        raise PyroVAEError(f"--covariance must be one of {', '.join(COVARIANCES)}, got {options['covariance']!r}")
    return options


def build(name: str, latent_dim: int, guide=None, obs_shape=None, bounded: bool = False, **options) -> nn.Module:
    """The prior ``name`` over R^latent_dim; ``guide`` is there for priors built on the encoder
    (vamp), ``obs_shape`` and ``bounded`` (data in [0, 1]) for their pseudo-inputs."""
    check_options(name, options)
    return PRIORS[name].build(latent_dim, guide=guide, obs_shape=obs_shape, bounded=bounded, **options)


__all__ = ["COVARIANCES", "MixturePrior", "PRIORS", "RealNVPPrior", "StandardNormal", "VampPrior", "build",
           "check_options"]
