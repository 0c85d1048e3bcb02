"""Hierarchical VAEs: several stochastic layers, with bottom-up or ladder inference.

The generative model is p(z_L) prod_{l<L} p(z_l | z_{l+1}) p(x | z_1), z_1 nearest x: the top
layer's prior is a registered prior, each conditional a diagonal Gaussian whose loc and scale an
MLP computes, and each layer its own sample site "z1", ..., "zL" inside the data plate, so
evaluation, diagnostics and the KL weight (every latent site) apply to every layer through the
model contract.

Inference modes (``INFERENCE``):

- ``bottom-up``: q(z_1|x) prod q(z_{l+1}|z_l) (Burda et al. 2016). q(z_1|x) is any registered
  guide family on the encoder trunk (``--guide iaf`` puts K IAF steps on the bottom layer); the
  layers above are diagonal Gaussians.
- ``ladder``: a deterministic bottom-up pass gives every layer a Gaussian estimate
  (mu_hat_l, sigma_hat_l); then, top-down, z_L ~ N(mu_hat_L, sigma_hat_L) and each lower layer
  draws from the precision-weighted merge of its estimate with the generative conditional
  p(z_l | z_{l+1}), whose network the guide shares with the model (Sønderby et al. 2016).

References: Burda, Grosse & Salakhutdinov 2016, "Importance Weighted Autoencoders",
arXiv:1509.00519; Sønderby, Raiko, Maaløe, Sønderby & Winther 2016, "Ladder Variational
Autoencoders", arXiv:1602.02282.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from . import contract, nets
from .errors import PyroVAEError
from .guides import GUIDES
from .guides.base import MIN_SCALE
from .registry import Registry

DEFAULT_LAYER_HIDDEN = (100, 100)


def site(layer: int) -> str:
    """The sample site of stochastic layer ``layer`` (1 = nearest x)."""
    return f"z{layer}"


class GaussianLayer(nn.Module):
    """(loc, scale) of a diagonal Gaussian over ``d_out`` dimensions, from an MLP of its input."""

    def __init__(self, d_in: int, d_out: int, hidden, act, batch_norm: bool):
        super().__init__()
        self.net = nets.mlp([d_in, *hidden, 2 * d_out], act, final_act=False, batch_norm=batch_norm)
        self.d_out = d_out
        # numbers held per particle and datapoint when it runs on every draw of the layer below:
        # input, hidden layers before and after their activation, output, loc and scale, a draw
        self.elements_per_sample = d_in + 2 * sum(hidden) + 6 * d_out

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw = self.net(h).chunk(2, dim=-1)
        return loc, MIN_SCALE + F.softplus(raw)


def _normal(loc_scale) -> dist.TorchDistribution:
    return dist.Normal(*loc_scale).to_event(1)


class HierarchicalVAE(nn.Module):
    """p(z_L) prod p(z_l | z_{l+1}) p(x | z_1); ``conditionals[l - 1]`` gives p(z_l | z_{l+1})."""

    classes = 0

    def __init__(self, decoder: nn.Module, likelihood: nn.Module, prior: nn.Module, conditionals: nn.ModuleList,
                 dims: list[int]):
        super().__init__()
        self.decoder, self.likelihood, self.prior, self.conditionals = decoder, likelihood, prior, conditionals
        self.latent_dims = tuple(dims)
        self.prior_site = site(len(dims))  # the top layer, drawn from ``prior``
        self.latent_dim = sum(dims)

    def forward(self, x: torch.Tensor, y=None):
        depth = len(self.latent_dims)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample(site(depth), self.prior())
            for layer in range(depth - 1, 0, -1):
                z = pyro.sample(site(layer), _normal(self.conditionals[layer - 1](z)))
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)
        return z

    @torch.no_grad()
    def ancestral(self, n: int, top: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Draws [z_1, ..., z_L] from the model, top layer first (or from ``top`` when given)."""
        z = self.prior().sample((n,)) if top is None else top
        draws = [z]
        for layer in range(len(self.latent_dims) - 1, 0, -1):
            z = _normal(self.conditionals[layer - 1](z)).sample()
            draws.append(z)
        return draws[::-1]

    @torch.no_grad()
    def sample(self, n: int, y=None) -> torch.Tensor:
        """Mean images E[x|z_1] for z drawn ancestrally from the top, shape (n, *obs_shape)."""
        return self.decode_mean(self.ancestral(n)[0])

    @torch.no_grad()
    def decode_mean(self, z1: torch.Tensor, y=None) -> torch.Tensor:
        return self.likelihood.mean(self.decoder(z1))

    @torch.no_grad()
    def reconstruct(self, guide, x: torch.Tensor, y=None) -> torch.Tensor:
        """E[x|z_1] for one draw of the guide per row of ``x``."""
        return self.decode_mean(contract.guide_draws(guide, x, y, 1)[site(1)][0])


class BottomUpGuide(nn.Module):
    """q(z_1|x) from ``bottom`` (a registered single-site guide on the encoder), then
    q(z_{l+1}|z_l) from ``ups[l - 1]``."""

    def __init__(self, bottom: nn.Module, ups: nn.ModuleList):
        super().__init__()
        self.bottom, self.ups = bottom, ups

    def elements_per_sample(self, x) -> int:
        """The bottom guide's count (a flow's hypernetworks among them) and each layer's above it."""
        from .evaluate import guide_elements

        return guide_elements(self.bottom, x) + sum(up.elements_per_sample for up in self.ups)

    def forward(self, x: torch.Tensor, y=None):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample(site(1), self.bottom.dist(x, y))
            for layer, up in enumerate(self.ups, start=2):
                z = pyro.sample(site(layer), _normal(up(z)))

    def prior_components(self, u: torch.Tensor) -> dist.TorchDistribution:
        """The top layer's Gaussian q(z_L | ...) of inputs ``u``, the layers below at their means
        (the VampPrior of the top layer)."""
        z = self.bottom.prior_components(u).mean
        for up in self.ups[:-1]:
            z = up(z)[0]
        return _normal(self.ups[-1](z))


class LadderGuide(nn.Module):
    """LVAE inference: bottom-up estimates, merged top-down with the model's conditionals.

    ``encoder`` gives h_1 = h(x) of size ``features``; ``ups[l - 2]`` maps h_{l-1} to h_l;
    ``heads[l - 1]`` maps h_l to the estimate (mu_hat_l, sigma_hat_l); ``generative`` is the
    model's own ``conditionals``.
    """

    def __init__(self, encoder: nn.Module, ups: nn.ModuleList, heads: nn.ModuleList, generative: nn.ModuleList):
        super().__init__()
        self.encoder, self.ups, self.heads, self.generative = encoder, ups, heads, generative

    def elements_per_sample(self, x=None) -> int:
        """The bottom-up estimates are per datapoint; per particle, the model's conditionals on each
        draw and the merges beside them (6 numbers per dimension of the layer merged)."""
        return sum(g.elements_per_sample for g in self.generative) + sum(6 * head.d_out for head in self.heads)

    def estimates(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        h = self.encoder(x)
        found = [self.heads[0](h)]
        for up, head in zip(self.ups, self.heads[1:]):
            h = up(h)
            found.append(head(h))
        return found

    def prior_components(self, u: torch.Tensor) -> dist.TorchDistribution:
        """The top layer's q(z_L | u) = N(mu_hat_L(u), sigma_hat_L(u)^2) (the VampPrior of the top layer)."""
        return _normal(self.estimates(u)[-1])

    def forward(self, x: torch.Tensor, y=None):
        estimates = self.estimates(x)
        depth = len(estimates)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample(site(depth), _normal(estimates[-1]))
            for layer in range(depth - 1, 0, -1):
                z = pyro.sample(site(layer), _normal(merge(estimates[layer - 1], self.generative[layer - 1](z))))


def merge(estimate, prior) -> tuple[torch.Tensor, torch.Tensor]:
    """The precision-weighted merge of two Gaussians' (loc, scale): the normalized product
    N(mu_hat, s_hat^2) N(mu_p, s_p^2), as the LVAE's top-down pass combines them."""
    (loc_a, scale_a), (loc_b, scale_b) = estimate, prior
    prec_a, prec_b = scale_a.pow(-2), scale_b.pow(-2)
    var = 1.0 / (prec_a + prec_b)
    return (loc_a * prec_a + loc_b * prec_b) * var, var.sqrt()


def _bottom_up(config, parts) -> nn.Module:
    if GUIDES[config.guide].meta.get("model_driven"):
        raise PyroVAEError(f"--guide {config.guide} moves one latent layer along the model's log p(x, z); with "
                           f"several layers ({config.latent_dims}) give it one --latent-dim, or use another guide")
    dims, hidden, act, bn = parts["dims"], parts["layer_hidden"], parts["act"], config.batch_norm
    bottom = parts["make_guide"](parts["encoder"], parts["features"], dims[0])
    ups = nn.ModuleList(GaussianLayer(dims[i], dims[i + 1], hidden, act, bn) for i in range(len(dims) - 1))
    return BottomUpGuide(bottom, ups)


def _ladder(config, parts) -> nn.Module:
    if not GUIDES[config.guide].meta.get("ladder"):
        takes = ", ".join(name for name, entry in GUIDES.items() if entry.meta.get("ladder"))
        raise PyroVAEError(f"--inference ladder merges diagonal Gaussians layer by layer and takes --guide {takes}; "
                           f"--guide {config.guide} works with --inference bottom-up (on the bottom layer)")
    dims, hidden, act, bn = parts["dims"], parts["layer_hidden"], parts["act"], config.batch_norm
    width = hidden[-1] if hidden else parts["features"]
    ups = nn.ModuleList(nets.mlp([parts["features"] if i == 0 else width, *hidden], act, final_act=True, batch_norm=bn)
                        if hidden else nn.Identity() for i in range(len(dims) - 1))
    heads = nn.ModuleList(GaussianLayer(parts["features"] if i == 0 else width, d, [], act, False)
                          for i, d in enumerate(dims))
    return LadderGuide(parts["encoder"], ups, heads, parts["conditionals"])


INFERENCE = Registry("inference")
INFERENCE.add("bottom-up", _bottom_up, "q(z_1|x) q(z_2|z_1) ...: any guide family on the bottom layer",
              reference="Burda et al. 2016, arXiv:1509.00519")
INFERENCE.add("ladder", _ladder, "top-down inference sharing the generative path, precision-weighted merge (diag)",
              reference="Sønderby et al. 2016, arXiv:1602.02282")


def build(config, obs_shape, likelihood, make_guide, make_prior):
    """(model, guide) of a hierarchical VAE for ``config`` (``config.latent_dims`` of 2 or more)."""
    dims = config.latent_dims
    hidden = list(config.layer_hidden if config.layer_hidden is not None else DEFAULT_LAYER_HIDDEN)
    act = nets.activation(config.activation)
    encoder, features, decoder = nets.build(config.arch, obs_shape, dims[0], config.hidden, config.activation,
                                            likelihood.out_channels(nets.channels(obs_shape)),
                                            batch_norm=config.batch_norm, **config.arch_options)
    conditionals = nn.ModuleList(GaussianLayer(dims[i + 1], dims[i], hidden, act, config.batch_norm)
                                 for i in range(len(dims) - 1))
    parts = {"dims": dims, "layer_hidden": hidden, "act": act, "encoder": encoder, "features": features,
             "conditionals": conditionals, "make_guide": make_guide}
    guide = INFERENCE[config.inference].build(config, parts)
    model = HierarchicalVAE(decoder, likelihood, make_prior(guide, dims[-1]), conditionals, dims)
    return model, guide
