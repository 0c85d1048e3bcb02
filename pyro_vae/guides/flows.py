"""Normalizing flows from ``pyro.distributions.transforms``, registered by family.

``FAMILIES`` owns the family logic: ``flow_steps`` builds K steps of one family, conditioned on
encoder features h(x) when ``context_dim`` is given and unconditional otherwise. The amortized
guides (a diagonal Gaussian base on h(x), then the conditioned steps) and ``UnconditionalFlow``
(used to fit the 2-D test energies) both build from it, so the two cannot drift apart.

Planar and radial flows have no analytic inverse: q scores only the samples it has just drawn
(Pyro's transforms cache the last x <-> y pair), which is all the ELBO and IWAE need.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from pyro.distributions.conditional import ConditionalTransform
from pyro.nn import AutoRegressiveNN, ConditionalAutoRegressiveNN
from torch import nn

from ..errors import PyroVAEError
from .base import AmortizedGuide, DiagonalGaussian


@dataclass(frozen=True)
class FlowFamily:
    """``steps(latent_dim, flows, hidden, context_dim, **options)`` -> list of K (conditional)
    transform modules; ``reverse_between``: reverse the latent order between steps, so coupling and
    autoregressive steps transform every dimension; ``invertible``: log q at any point, not only
    at the flow's own samples; ``step_elements(latent_dim, hidden, context_dim, **options)``: the
    numbers one conditional step holds per particle and datapoint while it runs (the evaluation
    sizes its chunks by them, see ``FlowGuide.elements_per_sample``)."""

    steps: Callable[..., list]
    reverse_between: bool
    invertible: bool
    step_elements: Callable[..., int]


def _hypernetwork(inputs: int, hidden, outputs: int) -> int:
    # its input, every hidden layer before and after its activation (both live for a moment), and
    # its output: 25% above the measured peak at the default widths (two layers of 320), more for
    # deeper ones (70% at three of 1024), whose layers are not all live at once
    return inputs + 2 * sum(hidden) + outputs


def _per_datapoint_step(latent_dim, hidden, context_dim, **_):
    # planar, radial and Householder steps compute their parameters from h(x) alone, once per
    # datapoint: a draw holds only the step's own arithmetic
    return 2 * latent_dim


def _coupling_elements(latent_dim, hidden, context_dim, **_):
    # Pyro's coupling conditions the second half on the first, split at latent_dim // 2; h(x) is
    # joined to every particle's first half
    split = latent_dim // 2
    return _hypernetwork(context_dim + split, hidden, 2 * (latent_dim - split))


def _iaf_elements(latent_dim, hidden, context_dim, stable: bool = False, **_):
    # the stable variant's gate adds its sigmoid and its complement
    return _hypernetwork(context_dim + latent_dim, hidden, 2 * latent_dim) + (2 * latent_dim if stable else 0)


def _spline_elements(latent_dim, hidden, context_dim, bins: int = 8, **_):
    # the rational-quadratic spline's widths, heights, derivatives and their cumulative sums,
    # each bins + 1 per dimension, beside the hypernetwork's 3 bins - 1 outputs
    return _hypernetwork(context_dim + latent_dim, hidden, (3 * bins - 1) * latent_dim) + 6 * (bins + 1) * latent_dim


def _planar_steps(latent_dim, flows, hidden, context_dim=None):
    if context_dim is None:
        return [T.planar(latent_dim) for _ in range(flows)]
    return [T.conditional_planar(latent_dim, context_dim, list(hidden)) for _ in range(flows)]


def _radial_steps(latent_dim, flows, hidden, context_dim=None):
    if context_dim is None:
        return [T.radial(latent_dim) for _ in range(flows)]
    return [T.conditional_radial(latent_dim, context_dim, list(hidden)) for _ in range(flows)]


def _coupling_steps(latent_dim, flows, hidden, context_dim=None):
    if context_dim is None:
        return [T.affine_coupling(latent_dim, list(hidden)) for _ in range(flows)]
    return [T.conditional_affine_coupling(latent_dim, context_dim, list(hidden)) for _ in range(flows)]


class _Conditioned:
    """An autoregressive network with its context bound, and the permutation the transform reads."""

    def __init__(self, nn, context):
        self.nn, self.context = nn, context
        self.permutation, self.get_permutation = nn.permutation, nn.get_permutation

    def __call__(self, x):
        return self.nn(x, context=self.context)


class ConditionalIAF(T.ConditionalAffineAutoregressive):
    """Pyro's conditional affine autoregressive step, conditioned without setting attributes on a
    ``functools.partial`` as Pyro's ``condition`` does: torch.compile cannot trace that, and broke
    the compiled step's graph once per IAF step. The same transform and the same parameters."""

    def condition(self, context):
        return T.AffineAutoregressive(_Conditioned(self.nn, context), **self.kwargs)


class ConditionalSpline(T.ConditionalSplineAutoregressive):
    """Pyro's conditional spline step, conditioned as ``ConditionalIAF`` is, for the same reason."""

    def condition(self, context):
        return T.SplineAutoregressive(self.input_dim, _Conditioned(self.nn, context), **self.kwargs)


def _iaf_steps(latent_dim, flows, hidden, context_dim=None, stable: bool = False):
    if context_dim is None:
        return [T.affine_autoregressive(latent_dim, list(hidden), stable=stable) for _ in range(flows)]
    return [ConditionalIAF(ConditionalAutoRegressiveNN(latent_dim, context_dim, list(hidden)), stable=stable)
            for _ in range(flows)]


def _householder_steps(latent_dim, flows, hidden, context_dim=None):
    # one step holding all K reflections, as Pyro's helpers build it
    if context_dim is None:
        return [T.householder(latent_dim, count_transforms=flows)]
    return [T.conditional_householder(latent_dim, context_dim, list(hidden), count_transforms=flows)]


def _spline_steps(latent_dim, flows, hidden, context_dim=None, bins: int = 8, bound: float = 5.0):
    # Not Pyro's (conditional_)spline_autoregressive helpers: they size the hypernetwork for linear
    # splines (with their lambdas) whatever ``order`` is, so a quadratic spline failed on its first
    # call (pyro-ppl/pyro#3130). Rational-quadratic splines take widths, heights and inner derivatives.
    param_dims = [bins, bins, bins - 1]
    steps = []
    for _ in range(flows):
        if context_dim is None:
            hypernet = AutoRegressiveNN(latent_dim, list(hidden), param_dims=param_dims)
            steps.append(T.SplineAutoregressive(latent_dim, hypernet, count_bins=bins, bound=bound, order="quadratic"))
        else:
            hypernet = ConditionalAutoRegressiveNN(latent_dim, context_dim, list(hidden), param_dims=param_dims)
            steps.append(ConditionalSpline(latent_dim, hypernet, count_bins=bins, bound=bound, order="quadratic"))
    return steps


FAMILIES: dict[str, FlowFamily] = {
    "planar": FlowFamily(_planar_steps, reverse_between=False, invertible=False, step_elements=_per_datapoint_step),
    "radial": FlowFamily(_radial_steps, reverse_between=False, invertible=False, step_elements=_per_datapoint_step),
    "coupling": FlowFamily(_coupling_steps, reverse_between=True, invertible=True, step_elements=_coupling_elements),
    "iaf": FlowFamily(_iaf_steps, reverse_between=True, invertible=True, step_elements=_iaf_elements),
    "householder": FlowFamily(_householder_steps, reverse_between=False, invertible=True,
                              step_elements=_per_datapoint_step),
    "spline": FlowFamily(_spline_steps, reverse_between=True, invertible=True, step_elements=_spline_elements),
}


def family(name: str) -> FlowFamily:
    if name not in FAMILIES:
        raise PyroVAEError(f"unknown flow {name!r}; choose from {', '.join(FAMILIES)}")
    return FAMILIES[name]


def flow_steps(name: str, latent_dim: int, flows: int, hidden=(320, 320), context_dim: int | None = None,
               **options) -> list:
    """K steps of the family ``name``: conditional on a context of size ``context_dim`` when it is
    given, unconditional otherwise. ``options`` are the family's own (``stable``, ``bins``, ...)."""
    return family(name).steps(latent_dim, flows, hidden, context_dim, **options)


def chain(steps, reverse: torch.Tensor, reverse_between: bool, context: torch.Tensor | None = None) -> list:
    """The transforms of ``steps`` in order, conditioned on ``context`` where they are conditional,
    with the permutation ``reverse`` between consecutive steps when ``reverse_between``."""
    transforms = []
    for i, step in enumerate(steps):
        if i > 0 and reverse_between:
            transforms.append(T.Permute(reverse))
        transforms.append(step.condition(context) if isinstance(step, ConditionalTransform) else step)
    return transforms


class UnconditionalFlow(nn.Module):
    """K unconditional steps of one family on R^latent_dim, with the guides' permutations.

    ``transforms()`` is the list of Pyro transforms to put after a base distribution; the module
    holds their parameters. ``invertible`` is False for planar and radial flows, whose density is
    known only at their own cached samples.
    """

    def __init__(self, name: str, latent_dim: int = 2, flows: int = 4, hidden=(64, 64), **options):
        super().__init__()
        spec = family(name)
        self.name, self.latent_dim, self.reverse_between, self.invertible = (
            name, latent_dim, spec.reverse_between, spec.invertible)
        self.steps = nn.ModuleList(flow_steps(name, latent_dim, flows, hidden, **options))
        # a buffer, so the permutation follows the module to its device
        self.register_buffer("reverse", torch.arange(latent_dim - 1, -1, -1))

    def transforms(self) -> list:
        return chain(self.steps, self.reverse, self.reverse_between)


def unconditional_flow(name: str, latent_dim: int = 2, flows: int = 4, hidden=(64, 64), **options) -> UnconditionalFlow:
    """The unconditional version of the guide family ``name`` (K = ``flows`` steps)."""
    return UnconditionalFlow(name, latent_dim, flows, hidden, **options)


class FlowGuide(DiagonalGaussian):
    """Base N(mu(x), diag sigma(x)^2) pushed through ``steps`` conditioned on h(x); with
    ``reverse_between`` the order of the latent dimensions is reversed between steps, so
    coupling and autoregressive steps transform every dimension. ``step_elements``: what one step
    holds per particle while it runs (its family's ``step_elements``; 0 where unknown)."""

    def __init__(self, encoder: nn.Module, features: int, latent_dim: int, steps: list, reverse_between: bool,
                 step_elements: int = 0):
        super().__init__(encoder, features, latent_dim)
        self.steps = nn.ModuleList(steps)
        self.reverse_between = reverse_between
        self.step_elements = step_elements
        # a buffer, so the permutation follows the guide to its device
        self.register_buffer("reverse", torch.arange(latent_dim - 1, -1, -1))

    def elements_per_sample(self, x=None) -> int:
        # A step's hypernetwork activations are freed before the next step runs, so one step's count
        # is held at a time; what each step leaves (its output and the cache its log-determinant
        # reads, about 2 per dimension) stays until the draw is scored.
        return super().elements_per_sample(x) + 2 * self.latent_dim * len(self.steps) + self.step_elements

    def base_and_transforms(self, x: torch.Tensor, y=None):
        """The base distribution and the list of transforms conditioned on h(x)."""
        h = self.features(x, y)
        loc, scale = self.loc_scale_of_features(h)
        base = dist.Normal(loc, scale).to_event(1)
        return base, chain(self.steps, self.reverse, self.reverse_between, h)

    def dist(self, x, y=None):
        base, transforms = self.base_and_transforms(x, y)
        return dist.TransformedDistribution(base, transforms)

    # the base's closed forms do not hold after the flow
    mean = AmortizedGuide.mean
    moments = AmortizedGuide.moments


def _guide(name, encoder, features, latent_dim, flows, flow_hidden, **options) -> FlowGuide:
    steps = flow_steps(name, latent_dim, flows, flow_hidden, context_dim=features, **options)
    spec = FAMILIES[name]
    return FlowGuide(encoder, features, latent_dim, steps, reverse_between=spec.reverse_between,
                     step_elements=spec.step_elements(latent_dim, flow_hidden, features, **options))


def planar(encoder, features, latent_dim, flows: int = 4, flow_hidden=(320, 320)):
    """References: Rezende & Mohamed 2015, "Variational Inference with Normalizing Flows",
    arXiv:1505.05770."""
    return _guide("planar", encoder, features, latent_dim, flows, flow_hidden)


def radial(encoder, features, latent_dim, flows: int = 4, flow_hidden=(320, 320)):
    """References: Rezende & Mohamed 2015, arXiv:1505.05770."""
    return _guide("radial", encoder, features, latent_dim, flows, flow_hidden)


def coupling(encoder, features, latent_dim, flows: int = 4, flow_hidden=(320, 320)):
    """References: Dinh, Sohl-Dickstein & Bengio 2017, "Density estimation using Real NVP",
    arXiv:1605.08803."""
    return _guide("coupling", encoder, features, latent_dim, flows, flow_hidden)


def iaf(encoder, features, latent_dim, flows: int = 4, flow_hidden=(320, 320), stable: bool = False):
    """``stable`` selects the gated update z' = s z + (1 - s) m of the paper's section 4.

    References: Kingma et al. 2016, "Improved Variational Inference with Inverse Autoregressive
    Flow", arXiv:1606.04934."""
    return _guide("iaf", encoder, features, latent_dim, flows, flow_hidden, stable=stable)


def householder(encoder, features, latent_dim, flows: int = 4, flow_hidden=(320, 320)):
    """K Householder reflections of the diagonal base: a cheap full-covariance family.

    References: Tomczak & Welling 2016, "Improving Variational Auto-Encoders using Householder
    Flow", arXiv:1611.09630."""
    return _guide("householder", encoder, features, latent_dim, flows, flow_hidden)


def spline(encoder, features, latent_dim, flows: int = 4, flow_hidden=(320, 320), bins: int = 8, bound: float = 5.0):
    """References: Durkan et al. 2019, "Neural Spline Flows", arXiv:1906.04032."""
    return _guide("spline", encoder, features, latent_dim, flows, flow_hidden, bins=bins, bound=bound)
