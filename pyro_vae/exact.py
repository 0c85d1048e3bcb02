"""Exact posteriors of models with one 2-D latent site, by quadrature on a grid.

p(x, z) is scored on an n x n grid through the model's own trace (any model of the contract
whose only latent site has event shape (2,)) and normalized by quadrature, which also gives
log p(x) to quadrature accuracy: a check on the importance-sampled NLL that no
higher-dimensional model allows. Imports no training code, so plots and diagnostics use it freely.
"""

from __future__ import annotations

import math

import torch

from . import contract
from .errors import PyroVAEError

GRID_BOX = 4.0  # the exact posterior is tabulated on [-4, 4]^2, where a N(0, I) prior keeps its mass


def planar_site(model, x: torch.Tensor, y=None) -> str:
    """The name of the model's one latent site, which must have event shape (2,)."""
    shapes = contract.latent_shapes(model, x, y)
    if len(shapes) != 1 or next(iter(shapes.values())) != (2,):
        found = ", ".join(f"{k} {v}" for k, v in shapes.items())
        raise PyroVAEError(f"exact grid posteriors need one latent site of shape (2,); the model has {found}")
    return next(iter(shapes))


@torch.no_grad()
def grid_posterior(model, x: torch.Tensor, n: int = 120, bounds=(-GRID_BOX, GRID_BOX, -GRID_BOX, GRID_BOX),
                   max_elements: int = 2**24, y=None):
    """log p(z|x) on an n x n grid over ``bounds`` (x0, x1, y0, y1) for each image, normalized by
    quadrature, and log p(x) by the same quadrature.

    Returns (axes (2, n), log_post of shape (N, n, n) indexed [image, z2, z1], log_px (N,)).
    """
    site = planar_site(model, x, y)
    x0, x1, y0, y1 = bounds
    axes = torch.stack([torch.linspace(x0, x1, n, device=x.device), torch.linspace(y0, y1, n, device=x.device)])
    zs = torch.stack(torch.meshgrid(axes[0], axes[1], indexing="xy"), -1).reshape(-1, 2).to(x.dtype)
    log_cell = math.log((x1 - x0) / (n - 1)) + math.log((y1 - y0) / (n - 1))
    chunk = max(1, max_elements // (zs.shape[0] * x[0].numel()))
    parts = []
    for i in range(0, x.shape[0], chunk):
        rows = x[i:i + chunk]
        values = {site: zs[:, None, :].expand(zs.shape[0], rows.shape[0], 2)}
        labels = None if y is None else y[i:i + chunk]
        parts.append(contract.log_joint(model, rows, values, labels, particles=zs.shape[0]).T)
    log_joint = torch.cat(parts)
    log_px = torch.logsumexp(log_joint, -1) + log_cell
    return axes, (log_joint - log_px[:, None]).reshape(-1, n, n), log_px


@torch.no_grad()
def posterior_window(model, x1: torch.Tensor, n: int = 100, width: float = 4.0, y=None):
    """Grid bounds around one image's posterior: its mean +- ``width`` standard deviations,
    found on a coarse grid over the default box; returns (x0, x1, y0, y1)."""
    axes, log_post, _ = grid_posterior(model, x1, n, y=y)
    w = log_post[0].exp()
    w = w / w.sum()
    zz = torch.stack(torch.meshgrid(axes[0], axes[1], indexing="xy"), -1)
    mean = (w[..., None] * zz).sum((0, 1))
    sd = ((w[..., None] * (zz - mean) ** 2).sum((0, 1))).sqrt().clamp(min=0.05)
    lo, hi = (mean - width * sd).tolist(), (mean + width * sd).tolist()
    return lo[0], hi[0], lo[1], hi[1]
