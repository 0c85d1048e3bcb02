"""The 2-D test energies U1-U4 of Rezende & Mohamed 2015 and flows fitted to them on a box.

exp(-U2..U4) has infinite mass on R^2, so the target is p(z) proportional to exp(-U(z)) on the box
B = (-BOX, BOX)^2, as the paper's figures show it. A :class:`BoxFlow` ends with z -> BOX tanh(z),
which puts q exactly on B, so KL(q || p) = E_q[log q + U] + log Z_B is a true divergence, with
log Z_B by the midpoint rule (:func:`log_z_box`). Shared by ``benchmarks/energies.py`` and
tutorial 03.

References: Rezende & Mohamed 2015, "Variational Inference with Normalizing Flows", table 1,
arXiv:1505.05770.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
import torch.nn.functional as F
from torch import nn

from .guides import MIN_SCALE
from .guides.flows import unconditional_flow

BOX = 4.0
GRID = 1000  # cells per side of the log Z quadrature: 1e-7 agreement with the reference values
HIDDEN = (32, 32)  # hypernetworks of coupling, iaf and spline steps: ample for 2-D targets


def _w1(z):
    return torch.sin(2 * math.pi * z[..., 0] / 4)


def u1(z):
    ring = 0.5 * ((z.norm(dim=-1) - 2) / 0.4) ** 2
    return ring - torch.logaddexp(-0.5 * ((z[..., 0] - 2) / 0.6) ** 2, -0.5 * ((z[..., 0] + 2) / 0.6) ** 2)


def u2(z):
    return 0.5 * ((z[..., 1] - _w1(z)) / 0.4) ** 2


def u3(z):
    w2 = 3 * torch.exp(-0.5 * ((z[..., 0] - 1) / 0.6) ** 2)
    d = z[..., 1] - _w1(z)
    return -torch.logaddexp(-0.5 * (d / 0.35) ** 2, -0.5 * ((d + w2) / 0.35) ** 2)


def u4(z):
    w3 = 3 * torch.sigmoid((z[..., 0] - 1) / 0.3)
    d = z[..., 1] - _w1(z)
    return -torch.logaddexp(-0.5 * (d / 0.4) ** 2, -0.5 * ((d + w3) / 0.35) ** 2)


ENERGIES = {"U1": u1, "U2": u2, "U3": u3, "U4": u4}


def midpoints(n: int, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell centres of an n x n grid over B as (n*n, 2) points, and the cell area."""
    h = 2 * BOX / n
    axis = -BOX + h * (torch.arange(n, dtype=dtype) + 0.5)
    z1, z2 = torch.meshgrid(axis, axis, indexing="xy")  # row i holds z2 = axis[i], as imshow draws it
    return torch.stack([z1.reshape(-1), z2.reshape(-1)], -1), h * h


def log_z_box(energy, n: int = GRID) -> float:
    """log of the integral of exp(-U) over B, midpoint rule on an n x n grid, in float64."""
    points, area = midpoints(n)
    return (torch.logsumexp(-energy(points), 0) + math.log(area)).item()


def box_transforms() -> list:
    # cache_size=1 so that log q of a fresh sample walks back through the cached values: planar and
    # radial steps cannot invert, and atanh of a saturated tanh would lose the sample's precision
    return [T.TanhTransform(cache_size=1), T.AffineTransform(0.0, BOX, cache_size=1)]


class BoxFlow(nn.Module):
    """q = law of BOX tanh(f(x)), x ~ N(loc, diag scale^2), f = K steps of the flow family ``name``."""

    def __init__(self, name: str, flows: int, hidden=HIDDEN):
        super().__init__()
        self.flow = unconditional_flow(name, 2, flows, hidden)
        self.loc = nn.Parameter(torch.zeros(2))
        self.raw_scale = nn.Parameter(torch.full((2,), 0.5413))  # softplus(0.5413) = 1

    @property
    def invertible(self) -> bool:
        return self.flow.invertible

    def dist(self) -> dist.TransformedDistribution:
        base = dist.Normal(self.loc, MIN_SCALE + F.softplus(self.raw_scale)).to_event(1)
        return dist.TransformedDistribution(base, self.flow.transforms() + box_transforms())

    def sample_and_score(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """n reparameterized samples and their log q, scored at once while the caches hold them."""
        q = self.dist()
        z = q.rsample((n,))
        return z, q.log_prob(z)


@torch.no_grad()
def kl_estimate(model: BoxFlow, energy, log_z: float, samples: int) -> tuple[float, float]:
    """KL(q||p) = E_q[log q + U] + log Z_B and its standard error, from fresh samples; ``model`` is
    turned to float64 in place, so that the estimate carries no float32 rounding."""
    z, log_q = model.double().sample_and_score(samples)
    v = log_q + energy(z)
    return (v.mean() + log_z).item(), (v.std() / math.sqrt(samples)).item()
