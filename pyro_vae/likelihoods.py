"""Likelihoods p(x|z) registry: the decoder's output turned into a distribution over one
observation of shape ``obs_shape`` (its event shape), whatever the number of leading dimensions.

A decoder gives ``out_channels(C)`` numbers per pixel location (C channels), laid out as an image
(out_channels, H, W) flattened: for the per-pixel families, [first parameter of all C channels,
second ..., ...], ``outputs_per_pixel`` parameters per channel; the likelihood reshapes them to the
observation's shape.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions.utils import broadcast_all

from .registry import Registry


class BernoulliLogits(dist.Bernoulli):
    """Pyro's Bernoulli, scored without one full-size temporary.

    torch's ``log_prob`` negates the (particles, N, pixels) cross-entropy out of place. That extra
    buffer per draw is enough for glibc to hand the large per-chunk buffers back to the kernel and
    fault them in again on every chunk of an importance-sampled NLL (one of the reasons the suite's
    estimator took 1.2x the hand-written one in benchmarks/evaluation.py). Negating in place gives
    the same number and the same gradient: the cross-entropy's backward does not read its output.
    """

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        logits, value = broadcast_all(self.logits, value)
        return F.binary_cross_entropy_with_logits(logits, value, reduction="none").neg_()


class Likelihood(nn.Module):
    """Base: ``params(out)`` splits decoder output (..., P * D) into P tensors (..., *obs_shape).
    Without an ``obs_shape``, observations are flat vectors (..., D)."""

    outputs_per_pixel = 1

    def __init__(self, obs_shape: tuple | None = None):
        super().__init__()
        self.obs_shape = None if obs_shape is None else tuple(obs_shape)

    def out_channels(self, channels: int) -> int:
        """Decoder outputs per pixel location of an observation with ``channels`` channels."""
        return self.outputs_per_pixel * channels

    def shaped(self, out: torch.Tensor) -> torch.Tensor:
        """(..., P * D) -> (..., P, *obs_shape)."""
        shape = (-1,) if self.obs_shape is None else self.obs_shape
        return out.reshape(out.shape[:-1] + (self.outputs_per_pixel,) + shape)

    def params(self, out: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.shaped(out).unbind(-1 - self.event_dims)

    @property
    def event_dims(self) -> int:
        return 1 if self.obs_shape is None else len(self.obs_shape)


class Bernoulli(Likelihood):
    """Independent Bernoulli pixels; the decoder gives logits."""

    def forward(self, out: torch.Tensor) -> dist.TorchDistribution:
        return BernoulliLogits(logits=self.params(out)[0]).to_event(self.event_dims)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.params(out)[0])


class Gaussian(Likelihood):
    """Independent Gaussian pixels with a decoded, learned scale kept above ``min_scale``:
    a continuous density is unbounded as its scale shrinks, so the floor keeps the bound finite."""

    outputs_per_pixel = 2

    def __init__(self, obs_shape: tuple | None = None, min_scale: float = 0.01):
        super().__init__(obs_shape)
        self.min_scale = float(min_scale)

    def forward(self, out: torch.Tensor) -> dist.TorchDistribution:
        loc, raw_scale = self.params(out)
        return dist.Normal(loc, self.min_scale + F.softplus(raw_scale)).to_event(self.event_dims)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return self.params(out)[0]


LIKELIHOODS = Registry("likelihood")
LIKELIHOODS.add("bernoulli", lambda obs_shape, min_scale=None: Bernoulli(obs_shape),
                "independent Bernoulli pixels (binary data)", binary=True)
LIKELIHOODS.add("gaussian", lambda obs_shape, min_scale=0.01: Gaussian(obs_shape, min_scale),
                "independent Gaussian pixels, decoded scale above --min-scale", binary=False)


def build(name: str, obs_shape: tuple, min_scale: float = 0.01) -> Likelihood:
    return LIKELIHOODS[name].build(tuple(obs_shape), min_scale=min_scale)

