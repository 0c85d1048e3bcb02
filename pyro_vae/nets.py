"""Encoder trunks and decoders, sized from the observation shape.

An encoder trunk maps flattened observations (..., D) to hidden features h(x) of size
``features``; the guide owns the heads that turn h(x) into posterior parameters, so flows can be
conditioned on the same h(x). A decoder maps latents (..., L) to ``outputs_per_pixel * D``
likelihood parameters laid out as [first parameter for all D pixels, second ..., ...]. Both accept
any number of leading batch dimensions (vectorized particles add one).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .errors import PyroVAEError

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "softplus": nn.Softplus}


def activation(name: str) -> type[nn.Module]:
    if name not in ACTIVATIONS:
        raise PyroVAEError(f"unknown activation {name!r}; choose from {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def mlp(sizes: list[int], act: type[nn.Module], final_act: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if final_act or i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


class _Flat(nn.Module):
    """Runs ``net`` on inputs reshaped to (batch, *in_shape), restoring any leading dimensions."""

    def __init__(self, net: nn.Module, in_shape: tuple, out_numel: int):
        super().__init__()
        self.net, self.in_shape, self.out_numel = net, tuple(in_shape), out_numel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[: x.dim() - 1]
        y = self.net(x.reshape((-1,) + self.in_shape))
        return y.reshape(lead + (self.out_numel,))


class _Crop(nn.Module):
    """Crops transposed-convolution output to the observation's height and width."""

    def __init__(self, height: int, width: int):
        super().__init__()
        self.height, self.width = height, width

    def forward(self, x):
        return x[..., : self.height, : self.width]


def build_mlp(obs_shape: tuple, latent_dim: int, hidden: list[int], act_name: str, outputs_per_pixel: int):
    """Returns (encoder trunk, features, decoder) of the fully connected architecture."""
    d = math.prod(obs_shape)
    act = activation(act_name)
    encoder = mlp([d] + list(hidden), act, final_act=True)
    decoder = mlp([latent_dim] + list(reversed(hidden)) + [outputs_per_pixel * d], act, final_act=False)
    return encoder, hidden[-1], decoder


def build_conv(obs_shape: tuple, latent_dim: int, hidden: list[int], act_name: str, outputs_per_pixel: int):
    """Two stride-2 convolutions (32, 64 channels) and a dense layer of ``hidden[-1]`` units,
    mirrored by the decoder; works for any image of at least 4x4 pixels."""
    if len(obs_shape) != 3 or min(obs_shape[1:]) < 4:
        raise PyroVAEError(f"--arch conv needs images of at least 4x4 pixels; the data has shape {obs_shape}")
    c, h, w = obs_shape
    act = activation(act_name)
    width = hidden[-1]
    convs = nn.Sequential(nn.Conv2d(c, 32, 4, 2, 1), act(), nn.Conv2d(32, 64, 4, 2, 1), act())
    with torch.no_grad():
        feat_shape = convs(torch.zeros(1, c, h, w)).shape[1:]
    encoder = _Flat(nn.Sequential(convs, nn.Flatten(), nn.Linear(math.prod(feat_shape), width), act()), obs_shape, width)
    h4, w4 = math.ceil(h / 4), math.ceil(w / 4)
    decoder_net = nn.Sequential(
        nn.Linear(latent_dim, width), act(), nn.Linear(width, 64 * h4 * w4), act(),
        nn.Unflatten(1, (64, h4, w4)),
        nn.ConvTranspose2d(64, 32, 4, 2, 1), act(), nn.ConvTranspose2d(32, c * outputs_per_pixel, 4, 2, 1),
        _Crop(h, w),
    )
    decoder = _Flat(decoder_net, (latent_dim,), outputs_per_pixel * c * h * w)
    return encoder, width, decoder


ARCHITECTURES = {"mlp": build_mlp, "conv": build_conv}


def build(arch: str, obs_shape: tuple, latent_dim: int, hidden: list[int], act_name: str, outputs_per_pixel: int):
    """Look up ``arch`` in :data:`ARCHITECTURES` and build (encoder, features, decoder)."""
    if arch not in ARCHITECTURES:
        raise PyroVAEError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[arch](tuple(obs_shape), latent_dim, hidden, act_name, outputs_per_pixel)
