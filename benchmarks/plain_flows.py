"""Hand-written plain-PyTorch VAEs of the suite's ``planar``, ``iaf`` and ``coupling`` guides.

What ``throughput.PlainVAE`` is for the ``diag`` guide, these are for the flow guides: the same
mathematics as the suite's guide (Pyro's conditional transforms on the diagonal Gaussian base, the
latent order reversed between IAF and coupling steps), the MLP Bernoulli decoder and the N(0, I)
prior, written as tensor code with torch.nn and torch.nn.functional only. ``plain_from(pair, name)``
copies a suite pair's parameters into the contender of its guide, so both start identical;
benchmarks/guides.py times each suite guide against its contender, and tests/test_plain_flows.py
checks that loss and gradients agree on the same noise.
"""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pyro_vae.guides import MIN_SCALE, FlowGuide
from pyro_vae.likelihoods import Bernoulli
from pyro_vae.models import VAE
from pyro_vae.priors import StandardNormal

sys.path.insert(0, str(Path(__file__).resolve().parent))  # throughput.py beside this file, however run
import throughput as tp  # noqa: E402

LOG_2PI = math.log(2 * math.pi)
# Pyro's defaults for AffineAutoregressive and AffineCoupling, which the suite's guides keep
LOG_SCALE_MIN, LOG_SCALE_MAX = -5.0, 3.0


def clamp_keep_gradient(x: torch.Tensor) -> torch.Tensor:
    """The value clamped to [LOG_SCALE_MIN, LOG_SCALE_MAX], the gradient of the identity: Pyro's
    ``clamp_preserve_gradients``, so a clamped log-scale still trains as in the suite."""
    return x + (x.clamp(LOG_SCALE_MIN, LOG_SCALE_MAX) - x).detach()


class Hypernet(nn.Module):
    """A copy of Pyro's DenseNN, ConditionalDenseNN or ConditionalAutoRegressiveNN (without skip
    connections): linear layers with ReLU between them. The MADE masks of the autoregressive one
    stay buffers multiplied into the weights at each call, as Pyro's MaskedLinear does: weights
    stored pre-masked would get gradients where the suite's get none, and drift apart under Adam."""

    def __init__(self, net: nn.Module):
        super().__init__()
        if not isinstance(net.f, nn.ReLU) or getattr(net, "skip_layer", None) is not None:
            raise ValueError("only ReLU hypernetworks without skip connections are written out here")
        self.layers = nn.ModuleList()
        self.masked = hasattr(net.layers[0], "mask")
        for i, layer in enumerate(net.layers):
            w = layer.weight
            # skip_init: no random initialization to draw (and so no draws taken from the caller's stream)
            linear = nn.utils.skip_init(nn.Linear, layer.in_features, layer.out_features, device=w.device,
                                        dtype=w.dtype)
            with torch.no_grad():
                linear.weight.copy_(w)
                linear.bias.copy_(layer.bias)
            self.layers.append(linear)
            if self.masked:
                self.register_buffer(f"mask{i}", layer.mask.detach().clone())

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            weight = layer.weight * getattr(self, f"mask{i}") if self.masked else layer.weight
            h = F.linear(h, weight, layer.bias)
            if i < last:
                h = F.relu(h)
        return h


class PlainFlowVAE(nn.Module):
    """Encoder h(x), base N(mu(h), diag sigma(h)^2) with sigma = MIN_SCALE + softplus, K flow steps
    conditioned on h, MLP decoder with Bernoulli logits, N(0, I) prior. ``step`` is one flow step."""

    reverse_between = True

    def __init__(self, pair):
        super().__init__()
        guide, model = pair.guide, pair.model
        if not isinstance(guide, FlowGuide) or type(model) is not VAE or not isinstance(model.prior, StandardNormal) \
                or not isinstance(model.likelihood, Bernoulli):
            raise ValueError("a plain contender needs a flow guide, the plain VAE, its N(0, I) prior and "
                             "Bernoulli pixels")
        if guide.reverse_between != self.reverse_between:
            raise ValueError(f"the suite's guide reverses between steps: {guide.reverse_between}, here: "
                             f"{self.reverse_between}")
        # the encoder, head and decoder are torch modules already (pyro_vae.nets): copied as they are
        self.encoder, self.head = copy.deepcopy(guide.encoder), copy.deepcopy(guide.head)
        self.decoder = copy.deepcopy(model.decoder)
        self.hypernets = nn.ModuleList(Hypernet(step.nn) for step in guide.steps)
        self.latent_dim = guide.latent_dim

    def step(self, k: int, z: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z after step k, its log|det dz'/dz| summed over the batch)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        """Negative ELBO summed over the batch, one reparameterized draw per image; images
        (N, *obs_shape) or flat rows (N, D)."""
        x = x.flatten(1)
        h = self.encoder(x)
        loc, raw = self.head(h).chunk(2, dim=-1)
        scale = MIN_SCALE + F.softplus(raw)
        z = loc + scale * torch.randn_like(loc)
        log_q = (-0.5 * ((z - loc) / scale).pow(2) - scale.log() - 0.5 * LOG_2PI).sum()
        for k in range(len(self.hypernets)):
            if k > 0 and self.reverse_between:
                z = z.flip(-1)  # Permute(reverse): volume-preserving, no log-det term
            z, log_det = self.step(k, z, h)
            log_q = log_q - log_det
        log_lik = -F.binary_cross_entropy_with_logits(self.decoder(z), x, reduction="sum")
        log_prior = (-0.5 * z.pow(2) - 0.5 * LOG_2PI).sum()
        return -(log_lik + beta * (log_prior - log_q))


class PlainPlanar(PlainFlowVAE):
    """Pyro's ConditionalPlanar: (b, u, w) = DenseNN(h), z' = z + u_hat tanh(w.z + b), with u_hat
    the u moved along w until w.u_hat = -1 + softplus(w.u) > -1, which keeps the step invertible."""

    reverse_between = False

    def step(self, k, z, h):
        b, u, w = self.hypernets[k](h).split([1, self.latent_dim, self.latent_dim], dim=-1)
        act = torch.tanh((w * z).sum(-1, keepdim=True) + b)
        alpha = (u * w).sum(-1, keepdim=True)
        u_hat = u + (F.softplus(alpha) - 1 - alpha) * w / w.pow(2).sum(-1, keepdim=True)
        psi_u = ((1 - act.pow(2)) * w * u_hat).sum(-1)
        return z + u_hat * act, (1 + psi_u).abs().log().sum()


class PlainIAF(PlainFlowVAE):
    """Pyro's ConditionalAffineAutoregressive, not ``stable``: (m, log s) = MADE([h, z]),
    z' = exp(log s) z + m with log s clamped."""

    def step(self, k, z, h):
        mean, log_scale = self.hypernets[k](torch.cat([h, z], dim=-1)).chunk(2, dim=-1)
        log_scale = clamp_keep_gradient(log_scale)
        return log_scale.exp() * z + mean, log_scale.sum()


class PlainCoupling(PlainFlowVAE):
    """Pyro's ConditionalAffineCoupling: the first ``split`` coordinates pass unchanged and, with h,
    give (m, log s) = DenseNN([h, z_1:d]) for the rest: z'_d+1: = exp(log s) z_d+1: + m."""

    def __init__(self, pair):
        super().__init__(pair)
        splits = {step.split_dim for step in pair.guide.steps}
        if len(splits) != 1:
            raise ValueError(f"the coupling steps split at different coordinates: {sorted(splits)}")
        self.split = splits.pop()

    def step(self, k, z, h):
        z1, z2 = z[..., :self.split], z[..., self.split:]
        mean, log_scale = self.hypernets[k](torch.cat([h, z1], dim=-1)).chunk(2, dim=-1)
        log_scale = clamp_keep_gradient(log_scale)
        return torch.cat([z1, log_scale.exp() * z2 + mean], dim=-1), log_scale.sum()


def _flow_builder(cls, **required):
    def build(pair):
        for step in pair.guide.steps:
            kwargs = getattr(step, "kwargs", {})
            extra = {key: v for key, v in kwargs.items() if required.get(key, None) != v}
            if extra:
                raise ValueError(f"{cls.__name__} writes out Pyro's defaults only, the suite's step sets {extra}")
        return cls(pair).to(next(pair.parameters()).device)
    return build


PLAIN = {
    "diag": tp.baseline_from,  # the 784-500-500-32 pair of throughput.py only
    "planar": _flow_builder(PlainPlanar),
    "iaf": _flow_builder(PlainIAF, stable=False),
    "coupling": _flow_builder(PlainCoupling, dim=-1),
}


def plain_from(pair, name: str) -> nn.Module:
    """The hand-written contender of guide ``name`` with ``pair``'s parameters, on its device."""
    if name not in PLAIN:
        raise ValueError(f"no hand-written contender for guide {name!r}; there are: {', '.join(PLAIN)}")
    return PLAIN[name](pair)
