"""Encoder trunks and decoders, sized from the observation shape.

An encoder trunk maps observations (..., *obs_shape) to hidden features h(x) of size
``features`` (an MLP flattens the observation itself); the guide owns the heads that turn h(x)
into posterior parameters, so flows can be conditioned on the same h(x). A decoder maps latents
(..., L) to ``out_channels`` likelihood parameters per pixel location (``likelihood.out_channels(C)``
for C channels), laid out as an image of ``out_channels`` channels, (out_channels, H, W) flattened
(flat observations (D,) count as D locations of one channel), which the likelihood shapes. Both accept any number of
leading batch dimensions (vectorized particles add one).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .errors import PyroVAEError
from .registry import Registry

ACTIVATIONS = Registry("activation")
for _name, _cls in (("relu", nn.ReLU), ("tanh", nn.Tanh), ("elu", nn.ELU), ("softplus", nn.Softplus),
                    ("identity", nn.Identity)):
    ACTIVATIONS.add(_name, _cls, f"torch.nn.{_cls.__name__}" + (" (linear networks)" if _name == "identity" else ""))


def activation(name: str) -> type[nn.Module]:
    return ACTIVATIONS[name].build


class BatchNorm(nn.BatchNorm1d):
    """Batch normalization over the last dimension, with any leading dimensions (vectorized
    particles add one) pooled into the batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.reshape(-1, x.shape[-1])).reshape(x.shape)


def mlp(sizes: list[int], act: type[nn.Module], final_act: bool, batch_norm: bool = False) -> nn.Sequential:
    """Linear layers of ``sizes``, each but the last followed by ``act`` (the last too with
    ``final_act``); with ``batch_norm``, a :class:`BatchNorm` before each activation."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if final_act or i < len(sizes) - 2:
            layers += [BatchNorm(b), act()] if batch_norm else [act()]
    return nn.Sequential(*layers)


class FlatMLP(nn.Sequential):
    """An MLP on observations of shape (..., *in_shape), flattened first; flat observations
    (..., D) pass as they are. A subclass of ``nn.Sequential``, so its state dict is that of the
    plain MLP."""

    def __init__(self, layers, in_shape: tuple):
        super().__init__(*layers)
        self.in_shape = tuple(in_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = len(self.in_shape)
        if k > 1 and tuple(x.shape[-k:]) == self.in_shape:
            x = x.flatten(-k)
        return super().forward(x)


class _Flat(nn.Module):
    """Runs ``net`` on inputs (..., *in_shape) reshaped to (batch, *in_shape), restoring any
    leading dimensions."""

    def __init__(self, net: nn.Module, in_shape: tuple, out_numel: int):
        super().__init__()
        self.net, self.in_shape, self.out_numel = net, tuple(in_shape), out_numel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = len(self.in_shape)
        # image-shaped (..., *in_shape), or flat (..., D) observations
        k = k if tuple(x.shape[-k:]) == self.in_shape else 1
        lead = x.shape[: x.dim() - k]
        y = self.net(x.reshape((-1,) + self.in_shape))
        return y.reshape(lead + (self.out_numel,))


class _Crop(nn.Module):
    """Crops transposed-convolution output to the observation's height and width."""

    def __init__(self, height: int, width: int):
        super().__init__()
        self.height, self.width = height, width

    def forward(self, x):
        return x[..., : self.height, : self.width]


def channels(obs_shape: tuple) -> int:
    """The channels of an observation: C of an image (C, H, W), 1 of anything else."""
    return obs_shape[0] if len(obs_shape) == 3 else 1


def build_mlp(obs_shape: tuple, latent_dim: int, hidden: list[int], act_name: str, out_channels: int,
              batch_norm: bool = False):
    """Returns (encoder trunk, features, decoder) of the fully connected architecture."""
    d = math.prod(obs_shape)
    act = activation(act_name)
    encoder = FlatMLP(mlp([d] + list(hidden), act, final_act=True, batch_norm=batch_norm), obs_shape)
    decoder = mlp([latent_dim] + list(reversed(hidden)) + [out_channels * (d // channels(obs_shape))], act,
                  final_act=False, batch_norm=batch_norm)
    return encoder, hidden[-1], decoder


def build_conv(obs_shape: tuple, latent_dim: int, hidden: list[int], act_name: str, out_channels: int,
               batch_norm: bool = False):
    """Two stride-2 convolutions (32, 64 channels) and a dense layer of ``hidden[-1]`` units,
    mirrored by the decoder; works for any image of at least 4x4 pixels."""
    if batch_norm:
        raise PyroVAEError("--batch-norm applies to --arch mlp (and the layers between latent layers), not conv")
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
        nn.ConvTranspose2d(64, 32, 4, 2, 1), act(), nn.ConvTranspose2d(32, out_channels, 4, 2, 1),
        _Crop(h, w),
    )
    decoder = _Flat(decoder_net, (latent_dim,), out_channels * h * w)
    return encoder, width, decoder


ARCHITECTURES = Registry("architecture")
ARCHITECTURES.add("mlp", build_mlp, "fully connected layers of --hidden units (the observation flattened)")
ARCHITECTURES.add("conv", build_conv, "two stride-2 convolutions (32, 64 channels) and a dense layer; images only")


def build(arch: str, obs_shape: tuple, latent_dim: int, hidden: list[int], act_name: str, out_channels: int,
          batch_norm: bool = False):
    """Look up ``arch`` in :data:`ARCHITECTURES` and build (encoder, features, decoder); the decoder
    gives ``out_channels`` numbers per pixel location."""
    return ARCHITECTURES[arch].build(tuple(obs_shape), latent_dim, hidden, act_name, out_channels,
                                     batch_norm=batch_norm)
