"""Distributions over 8-bit values: exact probability masses of k in 0..255, observed as k/255.

Three families, all scoring an observation x = k/255 by the log of the probability of its level k
(a mass, in nats, not a density), and all sampling values k/255:

* :class:`DiscretizedLogistic`: a logistic of location mu and scale s on the [0, 1] scale, binned
  into the 256 intervals [x - 1/510, x + 1/510) of the levels, the first level taking all the mass
  below and the last all the mass above (Kingma et al. 2016, arXiv:1606.04934; Salimans et al. 2017,
  arXiv:1701.05517).
* :class:`DiscretizedLogisticMixture`: K of those per pixel with weights shared by its channels; for
  three channels the PixelCNN++ coupling of the channel means (green's mean moves with red's value,
  blue's with red's and green's).
* :class:`Categorical256`: 256 free logits per pixel-channel.

The discretized logistic's mass of an interior bin [a, b] (standardized edges) is computed as
``log sigmoid(b) + log sigmoid(-a) + log(1 - exp(a - b))``, an identity of sigma(b) - sigma(a) in
which nothing cancels: the mass is exact however far the bin lies in the tails, and no fallback to
the density at the bin centre (PixelCNN++'s) is needed. The edges are computed in units of levels
(k +- 1/2 - 255 mu), so neighbouring bins share the very same edge and the masses telescope to 1.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch.distributions import constraints

LEVELS = 256
TOP = LEVELS - 1  # the largest level, 255: x = k / TOP
# The log-scale (of s on the [0, 1] scale) is clamped to this range, as PixelCNN++ clamps its own
# below at -7: beyond it exp() would overflow or the edges would divide by zero. At the lower end s
# is 1/640 of a bin (a centred bin holds all but 2 exp(-320) of the mass: all of it, in floats), at
# the upper end 400 times the whole [0, 1] range: the clamp costs nothing a model could want.
# Outside it the gradient with respect to the log-scale is zero.
LOG_SCALE_MIN, LOG_SCALE_MAX = -12.0, 6.0
# a value is on the grid when 255 x is this close to an integer (float32 k/255 is within 2e-5)
GRID_TOLERANCE = 1e-3


class _EightBit(constraints.Constraint):
    """Values k/255 for integers k in 0..255 (up to ``GRID_TOLERANCE`` levels of rounding)."""

    is_discrete = True
    event_dim = 0

    def check(self, value):
        scaled = value * TOP
        return (value >= 0) & (value <= 1) & ((scaled - scaled.round()).abs() <= GRID_TOLERANCE)

    def __repr__(self):
        return "EightBit(k/255 for k = 0..255)"


eight_bit = _EightBit()


def levels(value: torch.Tensor) -> torch.Tensor:
    """The level k of values k/255 (a float tensor, NaN kept); values off the grid go to the nearest
    level (only seen with validation off: with it on, they are refused)."""
    return (value * TOP).round().clamp(0, TOP)


def _log1mexp(d: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(-d)) for d > 0, accurate for small and large d (Maechler 2012)."""
    return torch.where(d < math.log(2), torch.log(-torch.expm1(-d)), torch.log1p(-torch.exp(-d)))


def _standardize(log_scale: torch.Tensor) -> torch.Tensor:
    """1 / s in units of levels: (k - 255 mu) * this is the standardized value of level k."""
    return torch.exp(-log_scale.clamp(LOG_SCALE_MIN, LOG_SCALE_MAX)) / TOP


def log_pmf(k: torch.Tensor, u: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log P(level k) of a discretized logistic with location ``u`` in units of levels (255 mu) and
    log-scale ``log_scale`` (of s on the [0, 1] scale); the arguments broadcast."""
    inv = _standardize(log_scale)
    k = k.to(u.dtype)
    below = (k - 0.5 - u) * inv  # the bin's standardized edges
    above = (k + 0.5 - u) * inv
    log_cdf_above = -F.softplus(-above)  # log P(y < upper edge): the mass of level 0
    log_sf_below = -F.softplus(below)  # log P(y > lower edge): the mass of level 255
    # sigma(b) - sigma(a) = sigma(b) sigma(-a) (1 - exp(a - b)); a floor on b - a keeps a bin far
    # in the tails (where b - a rounds to 0) finite, on masses far below any float's resolution
    width = torch.maximum(above - below, 0.5 * inv)
    interior = log_cdf_above + log_sf_below + _log1mexp(width)
    return torch.where(k <= 0, log_cdf_above, torch.where(k >= TOP, log_sf_below, interior))


def expected_level(u: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """E[k] of a discretized logistic: sum over j = 1..255 of P(k >= j) = sigmoid((u - j + 1/2) / s),
    accumulated one level at a time (memory of one parameter tensor, not 255)."""
    inv = _standardize(log_scale)
    total = torch.zeros_like(u * inv)
    for j in range(1, LEVELS):
        total = total + torch.sigmoid((u - (j - 0.5)) * inv)
    return total


def sample_levels(u: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Levels drawn from discretized logistics: a logistic draw rounded to the nearest level, the
    tails going to the edge levels (the bins of the mass are exactly those of the rounding)."""
    scale = torch.exp(log_scale.clamp(LOG_SCALE_MIN, LOG_SCALE_MAX)) * TOP
    tiny = torch.finfo(u.dtype).tiny
    p = torch.rand(torch.broadcast_shapes(u.shape, scale.shape), dtype=u.dtype, device=u.device)
    p = p.clamp(tiny, 1 - torch.finfo(u.dtype).eps)
    y = u + scale * (torch.log(p) - torch.log1p(-p))
    return y.round().clamp(0, TOP)


class _EightBitDistribution(dist.TorchDistribution):
    has_rsample = False
    support = eight_bit

    def _shaped_params(self, names, batch_shape, _instance, cls):
        new = self._get_checked_instance(cls, _instance)
        batch_shape = torch.Size(batch_shape)
        for name in names:
            param = getattr(self, name)
            tail = param.shape[len(self.batch_shape):]
            setattr(new, name, param.expand(batch_shape + tail))
        dist.TorchDistribution.__init__(new, batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new


class DiscretizedLogistic(_EightBitDistribution):
    """Independent 8-bit values, each a logistic of location ``loc`` and scale exp(``log_scale``)
    (both on the [0, 1] scale) discretized into the 256 levels, edge levels taking the tails."""

    arg_constraints = {"loc": constraints.real, "log_scale": constraints.real}

    def __init__(self, loc: torch.Tensor, log_scale: torch.Tensor, validate_args=None):
        self.loc, self.log_scale = torch.broadcast_tensors(loc, log_scale)
        super().__init__(self.loc.shape, torch.Size(), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        return self._shaped_params(("loc", "log_scale"), batch_shape, _instance, DiscretizedLogistic)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        return log_pmf(levels(value), self.loc * TOP, self.log_scale)

    def sample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            return sample_levels((self.loc * TOP).expand(shape), self.log_scale.expand(shape)) / TOP

    @property
    def mean(self):
        return expected_level(self.loc * TOP, self.log_scale) / TOP


class Categorical256(_EightBitDistribution):
    """Independent 8-bit values, each with its own 256 logits (last dimension of ``logits``)."""

    arg_constraints = {"logits": constraints.independent(constraints.real, 1)}

    def __init__(self, logits: torch.Tensor, validate_args=None):
        if logits.shape[-1:] != (LEVELS,):
            raise ValueError(f"Categorical256 needs {LEVELS} logits in the last dimension, "
                             f"got shape {tuple(logits.shape)}")
        self.logits = logits.log_softmax(-1)
        super().__init__(logits.shape[:-1], torch.Size(), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        return self._shaped_params(("logits",), batch_shape, _instance, Categorical256)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        k = levels(value)
        shape = torch.broadcast_shapes(k.shape, self.batch_shape)
        logits = self.logits.expand(shape + (LEVELS,))
        index = k.nan_to_num(0).long().expand(shape).unsqueeze(-1)
        log_p = logits.gather(-1, index).squeeze(-1)
        return torch.where(k.isnan(), torch.nan, log_p)

    def sample(self, sample_shape=torch.Size()):
        with torch.no_grad():
            k = torch.distributions.Categorical(logits=self.logits).sample(torch.Size(sample_shape))
            return k.to(self.logits.dtype) / TOP

    @property
    def mean(self):
        grid = torch.arange(LEVELS, dtype=self.logits.dtype, device=self.logits.device) / TOP
        return self.logits.exp() @ grid


class DiscretizedLogisticMixture(_EightBitDistribution):
    """8-bit images whose pixels are mixtures of K discretized logistics (PixelCNN++, Salimans et
    al. 2017, arXiv:1701.05517), the component shared by the C channels of a pixel.

    Parameters, per pixel location, channels last: ``logits`` (*batch, *locations, K), ``loc`` and
    ``log_scale`` (*batch, *locations, C, K) on the [0, 1] scale, and for C = 3 ``coeffs``
    (*batch, *locations, 3, K), already bounded (tanh): component j's green location is
    loc_g + coeffs[0] x_r and its blue one loc_b + coeffs[1] x_r + coeffs[2] x_g, with x the
    observed (or, when sampling, drawn) values on the [0, 1] scale.

    The event is one observation: (C, *locations) when ``channels_first`` (an image (C, H, W)), else
    ``locations`` (C = 1: a flat vector or a grey image without a channel axis).
    """

    arg_constraints = {"logits": constraints.independent(constraints.real, 1),
                       "loc": constraints.independent(constraints.real, 2),
                       "log_scale": constraints.independent(constraints.real, 2)}

    def __init__(self, logits, loc, log_scale, coeffs=None, event_dims: int = 1, channels_first: bool = True,
                 validate_args=None):
        channels = loc.shape[-2]
        if coeffs is not None and channels != 3:
            raise ValueError(f"channel coefficients need 3 channels, got {channels}")
        if not channels_first and channels != 1:
            raise ValueError(f"an observation without a channel axis has 1 channel, got {channels}")
        self.logits = logits.log_softmax(-1)
        self.loc, self.log_scale, self.coeffs = loc, log_scale, coeffs
        self._event_dims, self.channels_first = event_dims, channels_first
        locations = event_dims - 1 if channels_first else event_dims
        batch_shape = logits.shape[:logits.dim() - 1 - locations]
        loc_shape = logits.shape[len(batch_shape):-1]
        event_shape = (channels,) + loc_shape if channels_first else loc_shape
        super().__init__(batch_shape, torch.Size(event_shape), validate_args=validate_args)

    @property
    def mixtures(self) -> int:
        return self.logits.shape[-1]

    def expand(self, batch_shape, _instance=None):
        names = ("logits", "loc", "log_scale") + (() if self.coeffs is None else ("coeffs",))
        new = self._shaped_params(names, batch_shape, _instance, DiscretizedLogisticMixture)
        if self.coeffs is None:
            new.coeffs = None
        new._event_dims, new.channels_first = self._event_dims, self.channels_first
        return new

    def _pixels(self, value):
        """(..., *event) -> (..., *locations, C)."""
        return value.movedim(-len(self.event_shape), -1) if self.channels_first else value.unsqueeze(-1)

    def _unpixels(self, value):
        return value.movedim(-1, -len(self.event_shape)) if self.channels_first else value.squeeze(-1)

    def _locations(self, k):
        """Levels (..., *locations, C) -> each component's location in units of levels,
        (..., *locations, C, K), the later channels moved by the earlier ones' values."""
        u = self.loc * TOP
        if self.coeffs is None:
            return u
        x = k.to(u.dtype).unsqueeze(-1)  # (..., C, 1): coefficients act on levels here
        red, green, blue = u.unbind(-2)
        c = self.coeffs
        green = green + c[..., 0, :] * x[..., 0, :]
        blue = blue + c[..., 1, :] * x[..., 0, :] + c[..., 2, :] * x[..., 1, :]
        return torch.stack(torch.broadcast_tensors(red, green, blue), -2)

    def channel_log_probs(self, value):
        """log p_j(x_c | x_<c): each component's conditional log-mass of each channel, (..., *locations, C, K)."""
        k = levels(self._pixels(value))
        return log_pmf(k.unsqueeze(-1), self._locations(k), self.log_scale)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        per_component = self.logits + self.channel_log_probs(value).sum(-2)
        pixel = per_component.logsumexp(-1)
        return pixel.flatten(-(self._event_dims - 1 if self.channels_first else self._event_dims)).sum(-1)

    def sample(self, sample_shape=torch.Size()):
        sample_shape = torch.Size(sample_shape)
        with torch.no_grad():
            component = torch.distributions.Categorical(logits=self.logits).sample(sample_shape)
            pick = lambda t: t.expand(sample_shape + t.shape).gather(  # noqa: E731
                -1, component.unsqueeze(-1).unsqueeze(-1).expand(sample_shape + t.shape[:-1] + (1,))).squeeze(-1)
            u, log_scale = pick(self.loc * TOP), pick(self.log_scale)  # (*S, *batch, *locations, C)
            if self.coeffs is None:
                k = sample_levels(u, log_scale)
            else:
                c = pick(self.coeffs)
                red = sample_levels(u[..., 0], log_scale[..., 0])
                green = sample_levels(u[..., 1] + c[..., 0] * red, log_scale[..., 1])
                blue = sample_levels(u[..., 2] + c[..., 1] * red + c[..., 2] * green, log_scale[..., 2])
                k = torch.stack((red, green, blue), -1)
            return self._unpixels(k / TOP)

    @property
    def mean(self):
        """E[x] on the [0, 1] scale: exact for C = 1 and for the red channel; for green and blue each
        component's conditional mean is taken at that component's mean of the earlier channels, a
        plug-in approximation (exact when the coefficients are 0): the exact one would sum over the
        256 (green) or 65536 (blue) values of the earlier channels. Used for image grids."""
        u = self.loc * TOP
        if self.coeffs is None:
            means = expected_level(u, self.log_scale)
        else:
            c = self.coeffs
            red = expected_level(u[..., 0, :], self.log_scale[..., 0, :])
            green = expected_level(u[..., 1, :] + c[..., 0, :] * red, self.log_scale[..., 1, :])
            blue = expected_level(u[..., 2, :] + c[..., 1, :] * red + c[..., 2, :] * green, self.log_scale[..., 2, :])
            means = torch.stack((red, green, blue), -2)
        return self._unpixels((means * self.logits.exp().unsqueeze(-2)).sum(-1) / TOP)
