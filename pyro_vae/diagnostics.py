"""The one ArviZ adapter: every call into ArviZ goes through here, so a move to ArviZ 1.x
touches this file alone.

Draws are numpy arrays of shape (chain, draw, ...) throughout.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # ArviZ announces its 1.x refactor on import
    import arviz as az

from .io import atomic_path


def inference_data(draws: dict[str, np.ndarray], images: list[int], layout: dict | None = None,
                   shapes: dict | None = None) -> az.InferenceData:
    """One InferenceData with a posterior variable per latent site, of dims (chain, draw, source,
    image, <site>_dim...): the reference posterior and each guide's q(z|x) side by side as
    ``source`` coordinates. ``draws`` are (chains, draws, N, L) arrays, the sites flattened and
    joined as ``layout`` (site -> columns) says, each of event shape ``shapes[site]``; without
    a layout, one site ``z``."""
    sources = list(draws)
    joined = np.stack([draws[s] for s in sources], axis=2)
    layout = layout or {"z": slice(0, joined.shape[-1])}
    shapes = shapes or {name: (cols.stop - cols.start,) for name, cols in layout.items()}
    posterior, coords, dims = {}, {"source": sources, "image": list(images)}, {}
    for name, cols in layout.items():
        shape = tuple(shapes[name])
        posterior[name] = joined[..., cols].reshape(joined.shape[:4] + shape)
        event_dims = [f"{name}_dim" if len(shape) == 1 else f"{name}_dim{k}" for k in range(len(shape))]
        coords.update({d: list(range(n)) for d, n in zip(event_dims, shape)})
        dims[name] = ["source", "image", *event_dims]
    return az.from_dict(posterior=posterior, coords=coords, dims=dims)


def save_netcdf(idata: az.InferenceData, path: Path) -> Path:
    with atomic_path(path) as tmp:
        idata.to_netcdf(str(tmp))
    return path


def load_netcdf(path: Path) -> az.InferenceData:
    return az.from_netcdf(str(path))


def rhat(draws: np.ndarray) -> np.ndarray:
    """Rank-normalized split r-hat (Vehtari et al. 2021) per trailing coordinate."""
    return az.rhat(az.convert_to_dataset({"z": draws}))["z"].values


def ess(draws: np.ndarray, method: str = "bulk") -> np.ndarray:
    """Bulk or tail effective sample size per trailing coordinate."""
    return az.ess(az.convert_to_dataset({"z": draws}), method=method)["z"].values


def psis_khat(log_weights: np.ndarray) -> np.ndarray:
    """Pareto k-hat of importance weights, last axis = samples (Yao et al. 2018, arXiv:1802.02538)."""
    return np.asarray(az.psislw(np.asarray(log_weights, dtype=np.float64))[1])


def pair_plot(reference: np.ndarray, guide_draws: dict[str, np.ndarray], path: Path, title: str) -> Path:
    """Pair plots of the first two latent dimensions: reference draws (grey) under each guide's
    draws, one panel per guide. Arrays are (samples, latent_dim)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(guide_draws), figsize=(3.2 * len(guide_draws), 3.2), squeeze=False)
    for ax, (name, draws) in zip(axes[0], guide_draws.items()):
        for data, kwargs in ((reference, {"color": "0.6", "alpha": 0.35, "label": "reference"}),
                             (draws, {"color": "C0", "alpha": 0.25, "label": name})):
            ds = az.convert_to_dataset({"z1": data[None, :, 0], "z2": data[None, :, 1]})
            az.plot_pair(ds, kind="scatter", ax=ax, scatter_kwargs={"marker": "o", "s": 4, **kwargs})
        ax.set_title(name)
    fig.suptitle(title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
