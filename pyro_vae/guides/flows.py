"""Normalizing-flow guides: a diagonal Gaussian base on h(x), then K transforms from
``pyro.distributions.transforms`` conditioned on the same encoder features h(x).

Planar and radial flows have no analytic inverse: q scores only the samples it has just drawn
(Pyro's transforms cache the last x <-> y pair), which is all the ELBO and IWAE need.
"""

from __future__ import annotations

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from pyro.distributions.conditional import ConditionalTransform
from pyro.nn import ConditionalAutoRegressiveNN
from torch import nn

from .base import AmortizedGuide, DiagonalGaussian


class FlowGuide(DiagonalGaussian):
    """Base N(mu(x), diag sigma(x)^2) pushed through ``steps`` conditioned on h(x); with
    ``reverse_between`` the order of the latent dimensions is reversed between steps, so
    coupling and autoregressive steps transform every dimension."""

    def __init__(self, encoder: nn.Module, features: int, latent_dim: int, steps: list, reverse_between: bool):
        super().__init__(encoder, features, latent_dim)
        self.steps = nn.ModuleList(steps)
        self.reverse_between = reverse_between
        # a buffer, so the permutation follows the guide to its device
        self.register_buffer("reverse", torch.arange(latent_dim - 1, -1, -1))

    def base_and_transforms(self, x: torch.Tensor):
        """The base distribution and the list of transforms conditioned on h(x)."""
        h = self.encoder(x)
        loc, scale = self.loc_scale_of_features(h)
        base = dist.Normal(loc, scale).to_event(1)
        transforms = []
        for i, step in enumerate(self.steps):
            if i > 0 and self.reverse_between:
                transforms.append(T.Permute(self.reverse))
            transforms.append(step.condition(h) if isinstance(step, ConditionalTransform) else step)
        return base, transforms

    def dist(self, x):
        base, transforms = self.base_and_transforms(x)
        return dist.TransformedDistribution(base, transforms)

    @torch.no_grad()
    def mean(self, x, samples: int = 1000):  # enough for active units: see AmortizedGuide.mean
        return self.dist(x).rsample((samples,)).mean(0)

    moments = AmortizedGuide.moments  # the base's closed form does not hold after the flow


def planar(encoder, features, latent_dim, flows: int = 4, flow_hidden=(320, 320)):
    """References: Rezende & Mohamed 2015, "Variational Inference with Normalizing Flows",
    arXiv:1505.05770."""
    steps = [T.conditional_planar(latent_dim, features, list(flow_hidden)) for _ in range(flows)]
    return FlowGuide(encoder, features, latent_dim, steps, reverse_between=False)


def radial(encoder, features, latent_dim, flows: int = 4, flow_hidden=(320, 320)):
    """References: Rezende & Mohamed 2015, arXiv:1505.05770."""
    steps = [T.conditional_radial(latent_dim, features, list(flow_hidden)) for _ in range(flows)]
    return FlowGuide(encoder, features, latent_dim, steps, reverse_between=False)


def coupling(encoder, features, latent_dim, flows: int = 4, flow_hidden=(320, 320)):
    """References: Dinh, Sohl-Dickstein & Bengio 2017, "Density estimation using Real NVP",
    arXiv:1605.08803."""
    steps = [T.conditional_affine_coupling(latent_dim, features, list(flow_hidden)) for _ in range(flows)]
    return FlowGuide(encoder, features, latent_dim, steps, reverse_between=True)


def iaf(encoder, features, latent_dim, flows: int = 4, flow_hidden=(320, 320), stable: bool = False):
    """``stable`` selects the gated update z' = s z + (1 - s) m of the paper's section 4.

    References: Kingma et al. 2016, "Improved Variational Inference with Inverse Autoregressive
    Flow", arXiv:1606.04934."""
    steps = [T.conditional_affine_autoregressive(latent_dim, features, list(flow_hidden), stable=stable)
             for _ in range(flows)]
    return FlowGuide(encoder, features, latent_dim, steps, reverse_between=True)


def householder(encoder, features, latent_dim, flows: int = 4, flow_hidden=(320, 320)):
    """K Householder reflections of the diagonal base: a cheap full-covariance family.

    References: Tomczak & Welling 2016, "Improving Variational Auto-Encoders using Householder
    Flow", arXiv:1611.09630."""
    steps = [T.conditional_householder(latent_dim, features, list(flow_hidden), count_transforms=flows)]
    return FlowGuide(encoder, features, latent_dim, steps, reverse_between=False)


def spline(encoder, features, latent_dim, flows: int = 4, flow_hidden=(320, 320), bins: int = 8, bound: float = 5.0):
    """References: Durkan et al. 2019, "Neural Spline Flows", arXiv:1906.04032."""
    # Not T.conditional_spline_autoregressive: it sizes the hypernetwork for linear splines (with
    # their lambdas) whatever ``order`` is, so a quadratic spline failed on its first call
    # (pyro-ppl/pyro#3130). Rational-quadratic splines take widths, heights and inner derivatives.
    steps = []
    for _ in range(flows):
        hypernet = ConditionalAutoRegressiveNN(latent_dim, features, list(flow_hidden), param_dims=[bins, bins, bins - 1])
        steps.append(T.ConditionalSplineAutoregressive(latent_dim, hypernet, count_bins=bins, bound=bound,
                                                       order="quadratic"))
    return FlowGuide(encoder, features, latent_dim, steps, reverse_between=True)
