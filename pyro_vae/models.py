"""Generative models p(z) p(x|z) (and p(x|z, y)) as Pyro models, and the models registry.

A model is called as ``model(x, y=None)``; every per-datapoint sample site sits inside one
``pyro.plate("data", N)``, so bounds are per datapoint. Observations keep their shape
(N, *obs_shape); the label ``y`` (N,) is an argument, never part of the observation. The KL
weight beta of training is applied from outside (``contract.ScaleLatents``), not here.
"""

from __future__ import annotations

import pyro
import torch
import torch.nn.functional as F
from torch import nn

from . import hierarchical, nets
from .guides import GUIDES, attach
from .errors import PyroVAEError
from .likelihoods import LIKELIHOODS, Bernoulli, BernoulliLogits, Gaussian  # noqa: F401 (re-exported)
from .priors import PRIORS, RealNVPPrior, StandardNormal  # noqa: F401 (re-exported)
from .registry import Registry


class VAE(nn.Module):
    """The generative model: z ~ prior, x | z ~ likelihood(decoder(z))."""

    classes = 0  # label classes the model is conditioned on; none
    prior_site = "z"  # the latent site drawn from ``prior``

    def __init__(self, decoder: nn.Module, likelihood: nn.Module, prior: nn.Module, latent_dim: int):
        super().__init__()
        self.decoder, self.likelihood, self.prior = decoder, likelihood, prior
        self.latent_dim = latent_dim
        self.latent_dims = (latent_dim,)

    def _decode(self, z: torch.Tensor, y=None) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor, y=None):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior())
            pyro.sample("x", self.likelihood(self._decode(z, y)), obs=x)
        return z

    def log_terms(self, x: torch.Tensor, z: torch.Tensor, y=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(log p(z), log p(x|z)) for draws z (..., N, L) of the one latent site: the densities of
        ``forward``'s two sites, scored outside a trace (the evaluation's single-site fast path,
        tested equal to the trace path)."""
        return self.prior().log_prob(z), self.log_likelihood(x, z, y)

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor, y=None) -> torch.Tensor:
        """log p(x|z) alone, the half of ``log_terms`` a closed-form KL needs."""
        out = self._decode(z, y)
        # the registry's likelihoods score without building the distribution; any module that
        # returns one will do as well
        score = getattr(self.likelihood, "log_prob", None)
        return score(out, x) if score is not None else self.likelihood(out).log_prob(x)

    def _device(self) -> torch.device:
        return next(self.decoder.parameters()).device

    @torch.no_grad()
    def sample(self, n: int, y=None) -> torch.Tensor:
        """Mean images E[x|z] for z drawn from the prior, shape (n, *obs_shape)."""
        return self.decode_mean(self.prior().sample((n,)), y)

    @torch.no_grad()
    def decode_mean(self, z: torch.Tensor, y=None) -> torch.Tensor:
        return self.likelihood.mean(self._decode(z, y))

    @torch.no_grad()
    def reconstruct(self, guide, x: torch.Tensor, y=None) -> torch.Tensor:
        """E[x|z, y] for one z ~ q(z|x, y) per row of ``x``."""
        return self.decode_mean(guide.dist(x, y).sample(), y)


class WithLabel(nn.Module):
    """Encoder features of a labelled observation: the trunk's h(x) joined with one-hot y, so
    every guide head and flow hypernetwork is conditioned on the label as well."""

    uses_label = True

    def __init__(self, trunk: nn.Module, classes: int):
        super().__init__()
        self.trunk, self.classes = trunk, classes

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.trunk(x)
        code = onehot(y, self.classes, h)
        # an enumerated label (classes, 1) broadcasts against the batch: q(z|x, y) for every y at once
        lead = torch.broadcast_shapes(h.shape[:-1], code.shape[:-1])
        return torch.cat([h.expand(lead + h.shape[-1:]), code.expand(lead + code.shape[-1:])], -1)


def onehot(y, classes: int, like: torch.Tensor) -> torch.Tensor:
    """One-hot rows of labels ``y`` with the dtype and device of ``like``; a missing or
    out-of-range label is a :class:`PyroVAEError`."""
    if y is None:
        raise PyroVAEError("this model is conditioned on the label: call it with y (integer labels)")
    y = torch.as_tensor(y, device=like.device)
    if y.dtype.is_floating_point or y.dtype == torch.bool or (y.numel() and (y.min() < 0 or y.max() >= classes)):
        found = f"values from {y.min().item()} to {y.max().item()}" if y.numel() else "no values"
        raise PyroVAEError(f"labels must be integers in [0, {classes}); got {found} ({y.dtype})")
    return F.one_hot(y.long(), classes).to(like.dtype)


class ConditionalVAE(VAE):
    """A VAE conditioned on a class label: z ~ p(z), x | z, y ~ likelihood(decoder(z, y)), with the
    guide q(z|x, y). The bounds it reports are of log p(x|y).

    References: Kingma, Rezende, Mohamed & Welling 2014, "Semi-Supervised Learning with Deep
    Generative Models" (model M2 with observed labels), arXiv:1406.5298; Sohn, Lee & Yan 2015,
    "Learning Structured Output Representation using Deep Conditional Generative Models" (NeurIPS).
    """

    def __init__(self, decoder, likelihood, prior, latent_dim: int, classes: int):
        super().__init__(decoder, likelihood, prior, latent_dim)
        self.classes = classes

    def _decode(self, z: torch.Tensor, y=None) -> torch.Tensor:
        code = onehot(y, self.classes, z)
        lead = torch.broadcast_shapes(z.shape[:-1], code.shape[:-1])
        return self.decoder(torch.cat([z.expand(lead + z.shape[-1:]), code.expand(lead + code.shape[-1:])], -1))

    @torch.no_grad()
    def sample(self, n: int, y=None) -> torch.Tensor:
        """Mean images E[x|z, y] for z from the prior and the given labels ``y`` (n,); by default
        the classes in turn, 0, 1, ..., so a grid of ``classes`` columns shows one class per column."""
        y = torch.arange(n) % self.classes if y is None else y
        return self.decode_mean(self.prior().sample((n,)), y)

    @torch.no_grad()
    def decode_mean(self, z: torch.Tensor, y=None) -> torch.Tensor:
        if y is None:
            y = torch.arange(z.shape[-2] if z.dim() > 1 else 1) % self.classes
        return self.likelihood.mean(self._decode(z, y))


def _one_layer(config, model: str) -> int:
    dims = config.latent_dims
    if len(dims) > 1 and model != "vae":
        raise PyroVAEError(f"--model {model} has one stochastic layer; --latent-dim {dims} asks for {len(dims)}")
    if len(dims) == 1 and config.inference != "bottom-up":
        raise PyroVAEError(f"--inference {config.inference} needs several stochastic layers, e.g. --latent-dim "
                           f"{dims[0]},{max(1, dims[0] // 2)}")
    return dims[0]


def _build_vae(config, obs_shape, likelihood, make_guide, make_prior):
    if len(config.latent_dims) > 1:
        return hierarchical.build(config, obs_shape, likelihood, make_guide, make_prior)
    latent = _one_layer(config, "vae")
    encoder, features, decoder = nets.build(config.arch, obs_shape, latent, config.hidden, config.activation,
                                            likelihood.out_channels(nets.channels(obs_shape)),
                                            batch_norm=config.batch_norm, **config.arch_options)
    guide = make_guide(encoder, features, latent)
    model = VAE(decoder, likelihood, make_prior(guide, latent), latent)
    attach(guide, model)
    return model, guide


def labelled_decoder_and_guide(config, obs_shape, likelihood, make_guide, model: str):
    """(latent size, decoder of [z | e_y], guide q(z|x, y) on [h(x) | e_y]) of a one-layer model
    that takes labels."""
    if not config.classes or config.classes < 2:
        raise PyroVAEError(f"--model {model} needs at least 2 label classes, got {config.classes!r}")
    latent = _one_layer(config, model)
    encoder, features, decoder = nets.build(config.arch, obs_shape, latent + config.classes, config.hidden,
                                            config.activation, likelihood.out_channels(nets.channels(obs_shape)),
                                            batch_norm=config.batch_norm, **config.arch_options)
    return latent, decoder, make_guide(WithLabel(encoder, config.classes), features + config.classes, latent)


def _build_cvae(config, obs_shape, likelihood, make_guide, make_prior):
    latent, decoder, guide = labelled_decoder_and_guide(config, obs_shape, likelihood, make_guide, "cvae")
    model = ConditionalVAE(decoder, likelihood, make_prior(guide, latent), latent, config.classes)
    attach(guide, model)
    return model, guide


def _build_m2(config, obs_shape, likelihood, make_guide, make_prior):
    if GUIDES[config.guide].meta.get("model_driven"):
        raise PyroVAEError(f"--guide {config.guide} follows the model's log p(x, z) and does not take a label "
                           "enumerated by --model m2; use it with --model vae or cvae")
    from . import semisupervised  # its classes build on ConditionalVAE, defined here

    return semisupervised.build(config, obs_shape, likelihood, make_guide, make_prior)


# ``conditional``: the model is called with the label everywhere (its bounds are of log p(x|y));
# ``labels``: training needs labelled data; ``semi_supervised``: trained on a labelled subset
# with the label summed out elsewhere (bounds of log p(x)).
MODELS = Registry("model")
MODELS.add("vae", _build_vae, "p(z) p(x|z) with the guide q(z|x); with several --latent-dim entries, "
           "p(z_L) ... p(z_1|z_2) p(x|z_1) (see --inference)", reference="Kingma & Welling 2014, arXiv:1312.6114",
           conditional=False, labels=False, semi_supervised=False)
MODELS.add("cvae", _build_cvae, "p(z) p(x|z, y) conditioned on the class label y, guide q(z|x, y)",
           reference="Kingma et al. 2014, arXiv:1406.5298; Sohn et al. 2015", conditional=True, labels=True,
           semi_supervised=False)
MODELS.add("m2", _build_m2, "semi-supervised p(y) p(z) p(x|y, z), guide q(y|x) q(z|x, y); y observed for "
           "--labelled training images, enumerated for the rest", reference="Kingma et al. 2014, arXiv:1406.5298",
           conditional=False, labels=True, semi_supervised=True)
