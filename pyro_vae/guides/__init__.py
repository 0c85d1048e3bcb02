"""Amortized guides q(z|x), registered by name.

A guide owns the encoder trunk (x -> h(x)) and the heads and flows that turn h(x) into q(z|x).
Family options (``flows``, ``flow_hidden``, ``stable``, ...) are keyword arguments of the
builder, stored in the run's config so a checkpoint rebuilds the same guide.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

from torch import nn

from ..errors import PyroVAEError
from . import flows
from .base import MIN_SCALE, AmortizedGuide, ConstantVariance, DiagonalGaussian, FullCovariance
from .flows import FlowGuide, UnconditionalFlow, unconditional_flow


@dataclass
class GuideSpec:
    build: Callable[..., AmortizedGuide]
    about: str
    reference: str

    def options(self) -> dict:
        """The family's options and their defaults."""
        params = list(inspect.signature(self.build).parameters.values())[3:]
        return {p.name: p.default for p in params}


GUIDES: dict[str, GuideSpec] = {
    "diag": GuideSpec(DiagonalGaussian, "mean-field Gaussian N(mu(x), diag sigma(x)^2)",
                      "Kingma & Welling 2014, arXiv:1312.6114"),
    "full": GuideSpec(FullCovariance, "full-covariance Gaussian, Cholesky factor from the encoder",
                      "Kingma & Welling 2014, arXiv:1312.6114"),
    "const-var": GuideSpec(ConstantVariance, "encoder gives the mean only; one learned variance per dimension",
                           "Fyffe 2019, arXiv:1912.10309"),
    "planar": GuideSpec(flows.planar, "diagonal base + K conditional planar flows",
                        "Rezende & Mohamed 2015, arXiv:1505.05770"),
    "radial": GuideSpec(flows.radial, "diagonal base + K conditional radial flows",
                        "Rezende & Mohamed 2015, arXiv:1505.05770"),
    "coupling": GuideSpec(flows.coupling, "diagonal base + K conditional affine couplings (RealNVP), reversed between",
                          "Dinh et al. 2017, arXiv:1605.08803"),
    "iaf": GuideSpec(flows.iaf, "diagonal base + K conditional inverse autoregressive flows, reversed between",
                     "Kingma et al. 2016, arXiv:1606.04934"),
    "householder": GuideSpec(flows.householder, "diagonal base + K conditional Householder reflections",
                             "Tomczak & Welling 2016, arXiv:1611.09630"),
    "spline": GuideSpec(flows.spline, "diagonal base + K conditional rational-quadratic spline autoregressive flows",
                        "Durkan et al. 2019, arXiv:1906.04032"),
}


def check_name(name: str) -> GuideSpec:
    if name not in GUIDES:
        raise PyroVAEError(f"unknown guide {name!r}; choose from {', '.join(GUIDES)}")
    return GUIDES[name]


def check_options(name: str, options: dict) -> None:
    known = check_name(name).options()
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise PyroVAEError(f"guide {name!r} takes no option {', '.join(unknown)}"
                           + (f"; its options: {', '.join(known)}" if known else ""))
    if "flows" in options and (not isinstance(options["flows"], int) or options["flows"] <= 0):
        raise PyroVAEError(f"--flows must be a positive integer, got {options['flows']!r}")
    if "flow_hidden" in options and (not options["flow_hidden"] or any(h <= 0 for h in options["flow_hidden"])):
        raise PyroVAEError(f"--flow-hidden must be positive integers, got {options['flow_hidden']!r}")


def build(name: str, encoder: nn.Module, features: int, latent_dim: int, **options) -> AmortizedGuide:
    """Build the guide registered as ``name`` on top of ``encoder`` (features -> latent_dim)."""
    check_options(name, options)
    return GUIDES[name].build(encoder, features, latent_dim, **options)


__all__ = ["GUIDES", "MIN_SCALE", "AmortizedGuide", "ConstantVariance", "DiagonalGaussian", "FlowGuide",
           "FullCovariance", "GuideSpec", "UnconditionalFlow", "build", "check_name", "check_options",
           "unconditional_flow"]
