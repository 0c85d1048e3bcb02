"""Figures of a run, drawn with matplotlib (headless) and torchvision's image grids."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are files; never open a window
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torchvision.utils import make_grid  # noqa: E402

from . import contract  # noqa: E402
from .io import atomic_path  # noqa: E402


def save_figure(fig, path: Path, tight: bool = True) -> Path:
    """Write ``fig`` as a PNG at ``path`` atomically (cropped to its content unless ``tight`` is
    False) and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight" if tight else None)
    plt.close(fig)
    return path


def is_image(obs_shape: tuple) -> bool:
    return len(obs_shape) == 3


def grid_of(images: torch.Tensor, obs_shape: tuple, nrow: int) -> torch.Tensor:
    """torchvision's grid (3, H', W') of images (n, *obs_shape) or flattened ones (n, D) in [0, 1]."""
    return make_grid(images.detach().float().cpu().clamp(0, 1).reshape((-1,) + tuple(obs_shape)), nrow=nrow,
                     padding=1, pad_value=1.0)


def show_grid(ax, grid: torch.Tensor, obs_shape: tuple) -> None:
    """Draw a grid of ``grid_of``: in colour for 3-channel images, in grey levels otherwise."""
    if obs_shape[0] == 3:
        ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    else:  # make_grid repeats a single channel three times
        ax.imshow(grid[0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")


def image_grid(images: torch.Tensor, obs_shape: tuple, path: Path, nrow: int = 8, title: str | None = None) -> Path:
    """Save images (n, *obs_shape), or flattened ones (n, D), as one grid PNG, colour images in
    colour."""
    grid = grid_of(images, obs_shape, nrow)
    height, width = grid.shape[1:]
    inches = 6.0 / max(height, width)
    fig, ax = plt.subplots(figsize=(width * inches, height * inches))
    show_grid(ax, grid, tuple(obs_shape))
    ax.axis("off")
    if title:
        ax.set_title(title)
    return save_figure(fig, path)


def elbo_curve(history: list, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_objective"] for h in history], label="train objective (beta-weighted)")
    ax.plot(epochs, [h["valid_elbo"] for h in history], label="validation ELBO")
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per datapoint")
    ax.legend()
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def posterior_mean(guide, x: torch.Tensor, y=None) -> torch.Tensor:
    """E_q[z|x] of the guide's latent sites, flattened and joined: (N, L)."""
    means = contract.site_means(guide, x, y)
    return torch.cat(list(means.values()), -1)


@torch.no_grad()
def latent_scatter(guide, x: torch.Tensor, labels, path: Path, y=None) -> Path:
    z = posterior_mean(guide, x, y).cpu()
    fig, ax = plt.subplots(figsize=(6, 5))
    colours = {} if labels is None else {"c": labels.cpu(), "cmap": "tab10"}
    points = ax.scatter(z[:, 0], z[:, 1], s=6, **colours)
    if labels is not None:
        fig.colorbar(points, ax=ax, label="label")
    ax.set_xlabel("E[z1 | x]")
    ax.set_ylabel("E[z2 | x]")
    return save_figure(fig, path)


@torch.no_grad()
def manifold(model, obs_shape: tuple, path: Path, n: int = 15) -> Path:
    """Decoded means over a grid of prior quantiles (Kingma & Welling 2014, Fig. 4)."""
    device = next(model.parameters()).device
    q = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, n)).to(device)
    z = torch.stack(torch.meshgrid(q, q.flip(0), indexing="xy"), -1).reshape(-1, 2)
    return image_grid(model.decode_mean(z), obs_shape, path, nrow=n)


def model_uses_labels(model) -> bool:
    return bool(getattr(model, "classes", 0))


@torch.no_grad()
def training_figures(run_dir: Path, pair, data, history: list) -> list[Path]:
    """Samples, reconstructions and the ELBO curve; for a 2-D latent also the latent scatter and
    the decoded latent grid."""
    run_dir = Path(run_dir)
    pair.eval()
    written = [elbo_curve(history, run_dir / "elbo_curve.png")] if history else []
    if not is_image(data.obs_shape):
        return written
    device = next(pair.parameters()).device
    x_test, labels = data.observations("test", device), data.labels("test", device)
    y_test = labels if model_uses_labels(pair.model) else None
    model, x, y = pair.model, x_test[:32], None if y_test is None else y_test[:32]
    pairs = torch.stack([x, model.reconstruct(pair.guide, x, y)], 1).reshape(-1, data.obs_dim)
    written.append(image_grid(pairs, data.obs_shape, run_dir / "reconstructions.png",
                              title="data | reconstruction (alternating)"))
    # a conditional model draws the classes in turn: one class per column
    written.append(image_grid(model.sample(8 * (model.classes or 8)), data.obs_shape, run_dir / "samples.png",
                              nrow=model.classes or 8, title="prior samples"))
    if model.latent_dim == 2 and len(getattr(model, "latent_dims", (2,))) == 1:
        written.append(latent_scatter(pair.guide, x_test, labels, run_dir / "latent_scatter.png", y=y_test))
        if not model.classes:  # a decoded latent grid needs one label per image to mean anything
            written.append(manifold(model, data.obs_shape, run_dir / "manifold.png"))
    return written


@torch.no_grad()
def posterior_panels(pairs: dict, x: torch.Tensor, path: Path, samples: int = 4000, n: int = 100) -> Path:
    """Rows: test images; columns: guides. Each panel shows the model's exact posterior p(z|x)
    (black contours, quadrature on a grid) over a histogram of draws from the guide's q(z|x)."""
    from .exact import grid_posterior, planar_site, posterior_window

    names = list(pairs)
    fig, axes = plt.subplots(len(x), len(names), figsize=(2.4 * len(names), 2.4 * len(x)), squeeze=False)
    for j, name in enumerate(names):
        model, guide = pairs[name].model, pairs[name].guide
        draws = contract.guide_draws(guide, x, None, samples)[planar_site(model, x)].cpu()
        for i in range(len(x)):
            xi = x[i:i + 1]
            # a coarse grid finds where the posterior lives, a fine one resolves it there
            bounds = posterior_window(model, xi, n)
            grid, log_post, _ = grid_posterior(model, xi, n, bounds=bounds)
            ax = axes[i, j]
            ax.hist2d(draws[:, i, 0].numpy(), draws[:, i, 1].numpy(), bins=50, range=[bounds[:2], bounds[2:]],
                      cmap="Blues")
            ax.contour(grid[0].cpu(), grid[1].cpu(), log_post[0].exp().cpu(), levels=6, colors="k", linewidths=0.6)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name)
    fig.suptitle("exact p(z|x) (contours) and q(z|x) draws (shaded), per test image")
    return save_figure(fig, path)


@torch.no_grad()
def interpolations(pairs: dict, xa: torch.Tensor, xb: torch.Tensor, obs_shape: tuple, path: Path,
                   steps: int = 10) -> Path:
    """Decoded means along the straight line between the posterior means of two images."""
    names = list(pairs)
    fig, axes = plt.subplots(len(names), 1, figsize=(steps * 0.7, 0.9 * len(names)), squeeze=False)
    t = torch.linspace(0, 1, steps, device=xa.device)[:, None]
    for ax, name in zip(axes[:, 0], names):
        za, zb = posterior_mean(pairs[name].guide, xa), posterior_mean(pairs[name].guide, xb)
        images = pairs[name].model.decode_mean((1 - t) * za + t * zb)
        show_grid(ax, grid_of(images, obs_shape, steps), tuple(obs_shape))
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(name, rotation=0, ha="right", va="center")
    return save_figure(fig, path)


def khat_plot(rows: list[dict], path: Path, good: float = 0.5, bad: float = 0.7) -> Path:
    """Pareto k-hat per test image, one marker series per guide, with the 0.5 / 0.7 thresholds."""
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    guides = list(dict.fromkeys(r["guide"] for r in rows))
    images = list(dict.fromkeys(r["image"] for r in rows))
    for k, name in enumerate(guides):
        mine = [r for r in rows if r["guide"] == name]
        ax.plot([images.index(r["image"]) + 0.08 * (k - len(guides) / 2) for r in mine], [r["khat"] for r in mine],
                "o", label=name)
    ax.axhline(good, color="0.4", ls="--", lw=0.8)
    ax.axhline(bad, color="C3", ls="--", lw=0.8)
    ax.set_xticks(range(len(images)), [str(i) for i in images])
    ax.set_xlabel("test image")
    ax.set_ylabel("PSIS k-hat")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def variance_law_bars(per_dimension: dict, path: Path) -> Path:
    """E_x[sigma^2(x)] (lower part) + Var_x[mu(x)] (upper part) per latent dimension and run."""
    names = list(per_dimension)
    fig, axes = plt.subplots(1, len(names), figsize=(max(4.0, 0.5 * len(per_dimension[names[0]]["variance_law"]) + 2)
                                                     * len(names), 3.5), squeeze=False)
    for ax, name in zip(axes[0], names):
        d = per_dimension[name]
        dims = range(len(d["variance_law"]))
        ax.bar(dims, d["mean_variance"], label="E[sigma^2(x)]", color="C0")
        ax.bar(dims, d["variance_of_means"], bottom=d["mean_variance"], label="Var[mu(x)]", color="C1")
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.set_title(name)
        ax.set_xlabel("latent dimension")
    axes[0, 0].legend(fontsize=8)
    return save_figure(fig, path)


def aggregate_histograms(samples: dict, path: Path, max_dims: int = 8) -> Path:
    """Histograms of the aggregate posterior q(z) per dimension (rows: runs) against N(0, 1)."""
    names = list(samples)
    dims = min(max_dims, samples[names[0]].shape[1])
    fig, axes = plt.subplots(len(names), dims, figsize=(2.0 * dims, 1.8 * len(names)), squeeze=False)
    grid = torch.linspace(-4, 4, 200)
    normal = torch.distributions.Normal(0.0, 1.0).log_prob(grid).exp()
    for i, name in enumerate(names):
        for j in range(dims):
            ax = axes[i, j]
            ax.hist(samples[name][:, j], bins=60, range=(-4, 4), density=True, color="C0", alpha=0.7)
            ax.plot(grid, normal, color="k", lw=0.8)
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"z{j}", fontsize=9)
        axes[i, 0].set_ylabel(name, fontsize=9)
    return save_figure(fig, path)
