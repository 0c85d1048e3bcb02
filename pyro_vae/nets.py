"""Encoder trunks and decoders, sized from the observation shape.

An encoder trunk maps observations (..., *obs_shape) to hidden features h(x) of size
``features`` (an MLP flattens the observation itself); the guide owns the heads that turn h(x)
into posterior parameters, so flows can be conditioned on the same h(x). A decoder maps latents
(..., L) to ``out_channels`` likelihood parameters per pixel location (``likelihood.out_channels(C)``
for C channels), laid out as an image of ``out_channels`` channels, (out_channels, H, W) flattened
(flat observations (D,) count as D locations of one channel), which the likelihood shapes. Both accept any number of
leading batch dimensions (vectorized particles add one).

An architecture may declare options (``resnet``: ``channels``, ``blocks``, ``downsample``), kept in
``RunConfig.arch_options`` and passed to its builder by :func:`build`; every one is a positive integer.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

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


class ScaleInput(nn.Module):
    """The fixed input scaling of the residual encoder: pixels in [0, 1] mapped to [-1, 1], so the
    first convolution sees inputs centred on zero whatever the dataset's grey level."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x - 1


def _wn(conv: nn.Module) -> nn.Module:
    # Weight normalization (Salimans & Kingma 2016, arXiv:1602.07868): w = g v / |v| per output
    # channel. It decouples each filter's scale from its direction, which keeps a deep stack of
    # residual convolutions well conditioned and trains faster, like batch normalization, but with
    # no batch statistics: an image's features never depend on the other images of the batch or on
    # the vectorized particles pooled with it, training and evaluation compute the same function,
    # and data-parallel ranks have no running statistics to keep in agreement. The dense layers
    # are left plain: one each, they are not where the depth is.
    return weight_norm(conv)


class ResidualBlock(nn.Module):
    """x + conv(act(conv(act(x)))): two weight-normalized 3x3 convolutions of ``channels`` channels
    on the pre-activation residual path (He et al. 2016, arXiv:1603.05027)."""

    def __init__(self, channels: int, act: type[nn.Module]):
        super().__init__()
        self.branch = nn.Sequential(act(), _wn(nn.Conv2d(channels, channels, 3, padding=1)),
                                    act(), _wn(nn.Conv2d(channels, channels, 3, padding=1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)


def build_resnet(obs_shape: tuple, latent_dim: int, hidden: list[int], act_name: str, out_channels: int,
                 batch_norm: bool = False, channels: int = 64, blocks: int = 2, downsample: int = 2):
    """Returns (encoder trunk, features, decoder) of the residual architecture.

    Encoder: the input scaled to [-1, 1], a 3x3 convolution to ``channels`` channels, then at each of
    ``downsample + 1`` resolutions ``blocks`` residual blocks (:class:`ResidualBlock`), a stride-2
    3x3 convolution between resolutions (to ceil(H / 2) x ceil(W / 2), so odd sizes such as Frey's
    28x20 -> 14x10 -> 7x5 lose no pixel), and a dense layer of ``hidden[-1]`` features. The decoder
    mirrors it: dense layers to the coarsest grid, residual blocks, nearest-neighbour upsampling by 2
    and a 3x3 convolution between resolutions, cropped back to H x W after the last, and a 3x3
    convolution to ``out_channels`` per pixel. The width stays ``channels`` at every resolution.
    """
    if batch_norm:
        raise PyroVAEError("--batch-norm applies to --arch mlp (and the layers between latent layers), not resnet; "
                           "its convolutions are weight-normalized")
    side = 2 ** downsample
    if len(obs_shape) != 3 or min(obs_shape[1:]) < side:
        raise PyroVAEError(f"--arch resnet needs images (C, H, W) of at least {side}x{side} pixels (2 ** --downsample "
                           f"{downsample}); the data has shape {tuple(obs_shape)}")
    c, h, w = obs_shape
    act = activation(act_name)
    width = hidden[-1]
    h0, w0 = math.ceil(h / side), math.ceil(w / side)

    def stage() -> list[nn.Module]:
        return [ResidualBlock(channels, act) for _ in range(blocks)]

    enc: list[nn.Module] = [ScaleInput(), _wn(nn.Conv2d(c, channels, 3, padding=1))]
    for s in range(downsample + 1):
        enc += stage()
        if s < downsample:
            enc.append(_wn(nn.Conv2d(channels, channels, 3, stride=2, padding=1)))
    enc += [act(), nn.Flatten(), nn.Linear(channels * h0 * w0, width), act()]
    encoder = _Flat(nn.Sequential(*enc), obs_shape, width)

    dec: list[nn.Module] = [nn.Linear(latent_dim, width), act(), nn.Linear(width, channels * h0 * w0),
                            nn.Unflatten(1, (channels, h0, w0))]
    for s in range(downsample + 1):
        dec += stage()
        if s < downsample:
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), _wn(nn.Conv2d(channels, channels, 3, padding=1))]
            if s == downsample - 1:
                dec.append(_Crop(h, w))
    dec += [act(), _wn(nn.Conv2d(channels, out_channels, 3, padding=1))]
    decoder = _Flat(nn.Sequential(*dec), (latent_dim,), out_channels * h * w)
    return encoder, width, decoder


ARCHITECTURES = Registry("architecture")
ARCHITECTURES.add("mlp", build_mlp, "fully connected layers of --hidden units (the observation flattened)")
ARCHITECTURES.add("conv", build_conv, "two stride-2 convolutions (32, 64 channels) and a dense layer; images only")
ARCHITECTURES.add("resnet", build_resnet, "weight-normalized residual convolutions at --downsample + 1 resolutions "
                  "and a dense layer; images only",
                  {"channels": "resnet: convolution channels at every resolution",
                   "blocks": "resnet: residual blocks per resolution",
                   "downsample": "resnet: stride-2 stages (images need at least 2 ** downsample pixels a side)"},
                  reference="He et al. 2016, arXiv:1603.05027; Salimans & Kingma 2016, arXiv:1602.07868")


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def check_declared(registry: Registry, flag: str, name: str, options: dict) -> dict:
    """``registry.check_options``, with an option that ``name`` does not declare reported as the
    flag it is and the entries that do take it: ``--channels applies to --arch resnet, not --arch mlp``."""
    entry = registry[name]
    if not isinstance(options, dict):
        raise PyroVAEError(f"options of {registry.kind} {name!r} must be a mapping of names to values, got {options!r}")
    everywhere = registry.all_options()
    for key in options:
        if key in entry.declared:
            continue
        option_flag = "--" + str(key).replace("_", "-")
        if key in everywhere:
            takers = ", ".join(everywhere[key][1])
            raise PyroVAEError(f"{option_flag} applies to {flag} {takers}, not {flag} {name}")
        own = ", ".join(entry.declared)
        raise PyroVAEError(f"no {registry.kind} takes option {key!r}; {flag} {name} "
                           + (f"takes {own}" if own else "takes no options"))
    return registry.check_options(name, options)


def check_options(arch: str, options: dict) -> dict:
    """The options of ``arch``, its defaults filled in; an option it does not declare, or a value
    that is not a positive integer, is a :class:`PyroVAEError`."""
    options = check_declared(ARCHITECTURES, "--arch", arch, options)
    for key, value in options.items():
        if not _positive_int(value):
            raise PyroVAEError(f"--{key.replace('_', '-')} must be a positive integer, got {value!r}")
    return options


def build(arch: str, obs_shape: tuple, latent_dim: int, hidden: list[int], act_name: str, out_channels: int,
          batch_norm: bool = False, **options):
    """Look up ``arch`` in :data:`ARCHITECTURES` and build (encoder, features, decoder); the decoder
    gives ``out_channels`` numbers per pixel location. ``options`` are the architecture's declared
    options (``resnet``: channels, blocks, downsample); ``mlp`` and ``conv`` take none."""
    options = check_options(arch, options)
    return ARCHITECTURES[arch].build(tuple(obs_shape), latent_dim, hidden, act_name, out_channels,
                                     batch_norm=batch_norm, **options)
