"""Two-stage VAEs: a second VAE trained on the codes of a first, sampled through both.

``pyro-vae encode RUN1 --out codes.npz`` writes the first stage's codes with the run they came
from (``source_run``) and the SHA-256 of its checkpoint; a run trained on that file (``pyro-vae
train --dataset codes.npz --likelihood gaussian ...``) is a second stage. ``sample`` and
``quality`` of the second stage then draw u ~ p(u), z ~ p(z|u) and decode z with the first
stage: x ~ p(x|z) (its mean for continuous data, and in the grids of ``sample``). z is drawn, not
set to the mean of p(z|u): a second stage that learned little (I(z; u) near 0) has nearly one mean
for every u, and its "samples" were then one image repeated. A first stage retrained or moved
after its codes were written is refused, so images are never decoded by a model other than the
one that encoded them.

References: Dai & Wipf 2019, "Diagnosing and Enhancing VAE Models", arXiv:1903.05789.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from . import contract
from .errors import PyroVAEError
from .io import file_sha256
from .run import BEST, Checkpoint, load_run


def checkpoint_sha256(run_dir) -> str:
    return file_sha256(Path(run_dir) / BEST)


def source_arrays(run_dir) -> dict:
    """The arrays ``encode`` adds to its file: which run made the codes, and its checkpoint's hash."""
    return {"source_run": np.array(str(Path(run_dir).resolve())), "source_sha256": np.array(checkpoint_sha256(run_dir))}


def _source(dataset: str) -> tuple[str, str, list, list] | None:
    path = Path(dataset)
    if path.suffix != ".npz" or not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            if "source_run" not in f.files:
                return None
            return (str(f["source_run"]), str(f["source_sha256"]), [str(s) for s in f["sites"]],
                    [int(s) for s in f["site_sizes"]])
    except (OSError, ValueError, KeyError) as err:
        raise PyroVAEError(f"cannot read the first stage recorded in {path}: {err}") from None


def first_stage(config, device="cpu") -> tuple[Checkpoint, list, list] | None:
    """(the first stage's checkpoint, its code sites, their sizes) of a run trained on codes
    written by ``encode``; None for any other run."""
    found = _source(config.dataset)
    if found is None:
        return None
    run_dir, sha, sites, sizes = found
    if not (Path(run_dir) / BEST).is_file():
        raise PyroVAEError(f"the first stage {run_dir} that wrote {config.dataset} is gone")
    if checkpoint_sha256(run_dir) != sha:
        raise PyroVAEError(f"the first stage {run_dir} changed after it wrote {config.dataset}; encode it again")
    checkpoint = load_run(run_dir, device)
    if checkpoint.pair.model.classes:
        raise PyroVAEError("sampling through two stages needs a first stage without labels")
    return checkpoint, sites, sizes


@torch.no_grad()
def sample_codes(model, n: int, dim: int, device) -> torch.Tensor:
    """n codes z ~ p(z) of the second stage: u ~ p(u), z ~ p(z|u), through the model contract."""
    return contract.observation(model, torch.zeros(n, dim, device=device)).sample()


@torch.no_grad()
def decode(first: Checkpoint, sites: list, sizes: list, codes: torch.Tensor, draw: bool | None = None) -> torch.Tensor:
    """Images of the first stage for codes (n, sum sizes): its observation given the latent sites
    set to the codes' columns, drawn for discrete data (``draw`` None) and its mean otherwise."""
    model = first.pair.model
    x_like = torch.zeros((codes.shape[0],) + tuple(first.obs_shape), device=codes.device)
    shapes = contract.latent_shapes(model, x_like)
    values, start = {}, 0
    for name, size in zip(sites, sizes):
        values[name] = codes[:, start:start + size].reshape((codes.shape[0],) + tuple(shapes[name]))
        start += size
    fn = contract.observation(model, x_like, None, values)
    draw = fn.support.is_discrete if draw is None else draw
    return fn.sample() if draw else fn.mean
