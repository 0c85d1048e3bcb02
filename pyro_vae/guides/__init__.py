"""Amortized guides q(z|x), registered by name.

A guide owns the encoder trunk (x -> h(x)) and the heads and flows that turn h(x) into q(z|x).
Family options (``flows``, ``flow_hidden``, ``stable``, ...) are keyword arguments of the
builder, stored in the run's config so a checkpoint rebuilds the same guide.
"""

from __future__ import annotations

from torch import nn

from ..errors import PyroVAEError
from ..registry import Option, Registry
from . import flows, hamiltonian
from .base import MIN_SCALE, AmortizedGuide, ConstantVariance, DiagonalGaussian, FullCovariance
from .flows import FlowGuide, UnconditionalFlow, unconditional_flow


FLOW_OPTIONS = {"flows": "number of flow steps K",
                "flow_hidden": "hidden sizes of each flow step's hypernetwork, e.g. 320,320"}

HAMILTONIAN_OPTIONS = {
    "leapfrog": "hamiltonian: leapfrog steps K along grad log p(x, z)",
    "tempering": Option("learned", "hamiltonian: none, fixed (beta0 held), learned (beta0 learned) or free (every step's cooling learned)"),
    "step_size": "hamiltonian: initial per-dimension leapfrog step size (learned)",
    "beta0": "hamiltonian: initial inverse temperature beta_0 in (0, 1] (fixed tempering keeps it)",
}

GUIDES = Registry("guide")
# Every family serves a one-layer model, and the bottom layer of a hierarchical one under
# bottom-up inference (but ``hamiltonian``, below); ``ladder`` marks those the ladder's
# precision-weighted merge can take.
GUIDES.add("diag", DiagonalGaussian, "mean-field Gaussian N(mu(x), diag sigma(x)^2)",
           reference="Kingma & Welling 2014, arXiv:1312.6114", ladder=True)
GUIDES.add("full", FullCovariance, "full-covariance Gaussian, Cholesky factor from the encoder",
           reference="Kingma & Welling 2014, arXiv:1312.6114")
GUIDES.add("const-var", ConstantVariance, "encoder gives the mean only; one learned variance per dimension",
           reference="Fyffe 2019, arXiv:1912.10309")
GUIDES.add("planar", flows.planar, "diagonal base + K conditional planar flows", FLOW_OPTIONS,
           reference="Rezende & Mohamed 2015, arXiv:1505.05770")
GUIDES.add("radial", flows.radial, "diagonal base + K conditional radial flows", FLOW_OPTIONS,
           reference="Rezende & Mohamed 2015, arXiv:1505.05770")
GUIDES.add("coupling", flows.coupling, "diagonal base + K conditional affine couplings (RealNVP), reversed between",
           FLOW_OPTIONS, reference="Dinh et al. 2017, arXiv:1605.08803")
GUIDES.add("iaf", flows.iaf, "diagonal base + K conditional inverse autoregressive flows, reversed between",
           {**FLOW_OPTIONS, "stable": "iaf: the gated, numerically stable update"},
           reference="Kingma et al. 2016, arXiv:1606.04934")
GUIDES.add("householder", flows.householder, "diagonal base + K conditional Householder reflections", FLOW_OPTIONS,
           reference="Tomczak & Welling 2016, arXiv:1611.09630")
GUIDES.add("spline", flows.spline, "diagonal base + K conditional rational-quadratic spline autoregressive flows",
           {**FLOW_OPTIONS, "bins": "spline: bins per dimension", "bound": "spline: half-width of the spline's box"},
           reference="Durkan et al. 2019, arXiv:1906.04032")


# ``model_driven``: the guide moves its draws along the model's own log p(x, z) (it is attached to the
# model once both are built) and serves one-layer models without labels to enumerate.
GUIDES.add("hamiltonian", hamiltonian.HamiltonianGuide, "diagonal base + K leapfrog steps on the model's log p(x, z), "
           "learned step sizes and tempering (the Hamiltonian VAE)", HAMILTONIAN_OPTIONS,
           reference="Caterini et al. 2018, arXiv:1805.11328", model_driven=True)


def attach(guide, model) -> None:
    """Give a guide that follows the model's own density (``hamiltonian``) its model."""
    if callable(getattr(guide, "attach", None)):
        guide.attach(model)


def check_name(name: str):
    return GUIDES[name]


def check_options(name: str, options: dict) -> None:
    GUIDES.check_options(name, options)
    if GUIDES[name].meta.get("model_driven"):
        hamiltonian.check_options(**options)
    if "flows" in options and (not isinstance(options["flows"], int) or isinstance(options["flows"], bool)
                               or options["flows"] <= 0):
        raise PyroVAEError(f"--flows must be a positive integer, got {options['flows']!r}")
    hidden = options.get("flow_hidden", [1])
    if not isinstance(hidden, (list, tuple)) or not hidden or any(
            not isinstance(h, int) or isinstance(h, bool) or h <= 0 for h in hidden):
        raise PyroVAEError(f"--flow-hidden must be positive integers, got {options['flow_hidden']!r}")


def build(name: str, encoder: nn.Module, features: int, latent_dim: int, **options) -> AmortizedGuide:
    """Build the guide registered as ``name`` on top of ``encoder`` (features -> latent_dim)."""
    check_options(name, options)
    return GUIDES[name].build(encoder, features, latent_dim, **options)


__all__ = ["GUIDES", "MIN_SCALE", "AmortizedGuide", "ConstantVariance", "DiagonalGaussian", "FlowGuide",
           "FullCovariance", "UnconditionalFlow", "build", "check_name", "check_options",
           "unconditional_flow"]
