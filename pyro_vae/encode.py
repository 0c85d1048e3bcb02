"""A trained guide's codes of a dataset, written as a dataset: the first stage of stacked models.

``encode`` maps every image of the chosen splits to its posterior mean E_q[z|x] (``mean``), one
draw of q (``sample``), or the mean with the posterior's standard deviation per column
(``posterior``: a dataset whose training rows are drawn afresh from N(mean, sd^2) each time they
are used, as Kingma et al.'s M1+M2 trains M2 on new draws of M1's posterior), all continuous
latent sites flattened and joined, and writes them with the labels and the split each row came
from. ``pyro_vae.data`` reads such a file back as a dataset that keeps those
splits, so a second model trained on it (Kingma et al.'s M1+M2: M2 on the latents of an M1 VAE,
with a Gaussian likelihood; a two-stage VAE) never sees a test image in training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from . import contract
from .data import SPLITS
from .errors import PyroVAEError
from .io import atomic_path
from .models import MODELS

WHAT = ("mean", "sample", "posterior")


def _codes(guide, x: torch.Tensor, y, what: str) -> dict[str, torch.Tensor]:
    if what == "mean":
        return contract.site_means(guide, x, y)
    if what == "posterior":  # each site's mean and standard deviation, side by side
        moments = contract.site_moments(guide, x, y)
        return {name: torch.stack([m, v.clamp_min(0).sqrt()]) for name, (m, v) in moments.items()}
    draws = contract.guide_draws(guide, x, y, samples=1)
    # a discrete site (a semi-supervised model's label) is the label, not a code
    return {name: d[0].reshape(x.shape[0], -1) for name, d in draws.items() if d.is_floating_point()}


@torch.no_grad()
def encode(pair, data, config, splits=SPLITS, what: str = "mean", device=None, batch_size: int = 500) -> dict:
    """Arrays ``x`` (N, D) float32, ``y`` (N,) where the data have labels, ``split`` (N,) and the
    layout (``sites``, ``site_sizes``) of the rows of ``splits`` of ``data``, in that order; with
    ``what="posterior"`` also ``x_sd`` (N, D), the posterior's standard deviations."""
    if what not in WHAT:
        raise PyroVAEError(f"--what must be one of {', '.join(WHAT)}, got {what!r}")
    conditional = MODELS[config.model].conditional
    pair.eval()
    xs, sds, ys, names, layout = [], [], [], [], None
    for split in splits:
        x, y = data.observations(split, device), data.labels(split, device)
        for i in range(0, x.shape[0], batch_size):
            given = None if (y is None or not conditional) else y[i:i + batch_size]
            codes = _codes(pair.guide, x[i:i + batch_size], given, what)
            layout = layout or {name: c.shape[-1] for name, c in codes.items()}
            joined = torch.cat([codes[name] for name in layout], -1).float().cpu()
            if what == "posterior":
                joined, sd = joined
                sds.append(sd)
            xs.append(joined)
        if y is not None:
            ys.append(y.cpu())
        names += [split] * x.shape[0]
    if not xs:
        raise PyroVAEError("nothing to encode")
    arrays = {"x": torch.cat(xs).numpy(), "split": np.array(names), "sites": np.array(list(layout)),
              "site_sizes": np.array(list(layout.values()), dtype=np.int64)}
    if len(ys) == len(splits):
        arrays["y"] = torch.cat(ys).numpy().astype(np.int64)
    if sds:
        arrays["x_sd"] = torch.cat(sds).numpy()
    if not all(np.isfinite(arrays[k]).all() for k in ("x", "x_sd") if k in arrays):
        raise PyroVAEError("the guide gave NaN or Inf codes; nothing written")
    return arrays


def write(path: str | Path, arrays: dict) -> Path:
    """Write ``arrays`` as an .npz file, atomically."""
    path = Path(path)
    if path.suffix != ".npz":
        raise PyroVAEError(f"--out must name a .npz file, got {path}")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    return path
