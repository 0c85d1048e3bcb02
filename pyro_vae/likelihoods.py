"""Likelihoods p(x|z) registry: the decoder's output turned into a distribution over one
observation of shape ``obs_shape`` (its event shape), whatever the number of leading dimensions.

A decoder gives ``out_channels(C)`` numbers per pixel location (C channels), laid out as an image
(out_channels, H, W) flattened: for the per-pixel families, [first parameter of all C channels,
second ..., ...], ``outputs_per_pixel`` parameters per channel; the likelihood reshapes them to the
observation's shape. The mixture of discretized logistics (``dmol``) is the exception: its
parameters belong to a pixel location, not a channel (see :class:`DiscretizedMixture`).

Each entry's ``levels`` says what it scores: 2 (binary values), 256 (8-bit values k/255, scored by
exact probability masses, so its NLL converts to bits per dimension), None (a density over reals).
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions.util import is_validation_enabled
from torch import nn
from torch.distributions.utils import broadcast_all

from . import discretized
from .discretized import Categorical256, DiscretizedLogistic, DiscretizedLogisticMixture
from .errors import PyroVAEError
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

    def log_prob(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(x | decoder output ``out``), summed over the observation: what ``self(out)`` scores."""
        return self(out).log_prob(x)

    @property
    def event_dims(self) -> int:
        return 1 if self.obs_shape is None else len(self.obs_shape)


class Bernoulli(Likelihood):
    """Independent Bernoulli pixels; the decoder gives logits."""

    def forward(self, out: torch.Tensor) -> dist.TorchDistribution:
        return BernoulliLogits(logits=self.params(out)[0]).to_event(self.event_dims)

    def log_prob(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # Unvalidated (as training steps run), the same number without building the distribution:
        # its construction and broadcasting took about 1% of a 784-500-500-32 training step, a
        # fifth of the suite's margin over a hand-written one (benchmarks/throughput.py).
        if is_validation_enabled():  # the distribution checks that x is binary
            return super().log_prob(out, x)
        logits, x = torch.broadcast_tensors(self.params(out)[0], x)
        return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(-self.event_dims).sum(-1)

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


class DLogistic(Likelihood):
    """Independent 8-bit pixel-channels, each a discretized logistic (Kingma et al. 2016,
    arXiv:1606.04934): the decoder gives a location (on the [0, 1] scale, unbounded) and a
    log-scale per channel, layout (2C, H, W) = [locations of the C channels, log-scales]. The
    log-scale is clamped to [-12, 6] (see ``discretized.LOG_SCALE_MIN``); the masses are exact."""

    outputs_per_pixel = 2

    def forward(self, out: torch.Tensor) -> dist.TorchDistribution:
        loc, log_scale = self.params(out)
        return DiscretizedLogistic(loc, log_scale).to_event(self.event_dims)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return self(out).mean


class Categorical(Likelihood):
    """Independent 8-bit pixel-channels, each a 256-way categorical (van den Berg et al. 2018,
    arXiv:1803.05649, on Frey faces): layout (256 C, H, W) = [logit of level 0 of the C channels,
    of level 1, ...]."""

    outputs_per_pixel = discretized.LEVELS

    def forward(self, out: torch.Tensor) -> dist.TorchDistribution:
        logits = self.shaped(out).movedim(-1 - self.event_dims, -1)
        return Categorical256(logits).to_event(self.event_dims)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return self(out).mean


class DiscretizedMixture(Likelihood):
    """8-bit pixels, each a mixture of K discretized logistics whose weights its C channels share
    (PixelCNN++, Salimans et al. 2017, arXiv:1701.05517). For C = 3 the green location of component
    j moves with the red value and the blue with red and green, by tanh-bounded coefficients
    decoded per component (on the [0, 1] scale: mu_g + c_gr x_r, mu_b + c_br x_r + c_bg x_g).

    Decoder outputs per pixel location (its channels, in this order): K mixture logits, C K
    locations, C K log-scales (both channel-major: index c K + j), and for C = 3, 3 K coefficients
    (c_gr of the K components, then c_br, then c_bg): K (1 + 2 C) (+ 3 K) in all, not a multiple of
    C. An observation without a channel axis (flat (D,) or (H, W)) is one channel. Log-scales are
    clamped as dlogistic's; ``mean`` is exact but for green and blue (see
    :attr:`DiscretizedLogisticMixture.mean`).
    """

    outputs_per_pixel = None  # per location, not per channel: see out_channels

    def __init__(self, obs_shape: tuple | None = None, mixtures: int = 10):
        super().__init__(obs_shape)
        self.mixtures = int(mixtures)

    def out_channels(self, channels: int) -> int:
        k = self.mixtures
        return k * (1 + 2 * channels) + (3 * k if channels == 3 else 0)

    def _layout(self):
        """(channels, location shape, channels_first) of the observation."""
        if self.obs_shape is not None and len(self.obs_shape) == 3:
            return self.obs_shape[0], self.obs_shape[1:], True
        return 1, self.obs_shape, False

    def forward(self, out: torch.Tensor) -> dist.TorchDistribution:
        channels, locations, channels_first = self._layout()
        k = self.mixtures
        outputs = self.out_channels(channels)
        image = out.reshape(out.shape[:-1] + (outputs,) + ((-1,) if locations is None else tuple(locations)))
        params = image.movedim(-1 - (1 if locations is None else len(locations)), -1)  # (..., *locations, outputs)
        logits = params[..., :k]
        loc = params[..., k:k + channels * k].unflatten(-1, (channels, k))
        log_scale = params[..., k + channels * k:k + 2 * channels * k].unflatten(-1, (channels, k))
        coeffs = torch.tanh(params[..., k + 2 * channels * k:].unflatten(-1, (3, k))) if channels == 3 else None
        return DiscretizedLogisticMixture(logits, loc, log_scale, coeffs, event_dims=self.event_dims,
                                          channels_first=channels_first)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return self(out).mean


def _dmol(obs_shape, min_scale=None, mixtures: int = 10) -> DiscretizedMixture:
    if not isinstance(mixtures, int) or isinstance(mixtures, bool) or mixtures <= 0:
        raise PyroVAEError(f"--mixtures must be a positive integer, got {mixtures!r}")
    return DiscretizedMixture(obs_shape, mixtures)


LIKELIHOODS = Registry("likelihood")
LIKELIHOODS.add("bernoulli", lambda obs_shape, min_scale=None: Bernoulli(obs_shape),
                "independent Bernoulli pixels (binary data)", binary=True, levels=2)
LIKELIHOODS.add("gaussian", lambda obs_shape, min_scale=0.01: Gaussian(obs_shape, min_scale),
                "independent Gaussian pixels, decoded scale above --min-scale", binary=False, levels=None)
LIKELIHOODS.add("dlogistic", lambda obs_shape, min_scale=None: DLogistic(obs_shape),
                "8-bit pixels: discretized logistic per channel, exact masses of the 256 levels",
                reference="Kingma et al. 2016, arXiv:1606.04934; Salimans et al. 2017, arXiv:1701.05517",
                binary=False, levels=256)
LIKELIHOODS.add("dmol", _dmol,
                "8-bit pixels: mixture of --mixtures discretized logistics per pixel, RGB means coupled",
                {"mixtures": "dmol: mixture components per pixel"},
                reference="Salimans et al. 2017, arXiv:1701.05517", binary=False, levels=256)
LIKELIHOODS.add("categorical", lambda obs_shape, min_scale=None: Categorical(obs_shape),
                "8-bit pixels: 256-way categorical per channel (256 logits each)",
                reference="van den Berg et al. 2018, arXiv:1803.05649", binary=False, levels=256)


def build(name: str, obs_shape: tuple, min_scale: float = 0.01, **options) -> Likelihood:
    """The likelihood ``name`` for observations of ``obs_shape``; ``options`` are those it declares
    (unknown ones are an error), ``min_scale`` the Gaussian's floor (the others ignore it)."""
    options = LIKELIHOODS.check_options(name, options)
    return LIKELIHOODS[name].build(tuple(obs_shape), min_scale=min_scale, **options)
