"""Sample-quality metrics in a feature space: Fréchet distance, improved precision and recall.

Both compare a set of real images with a set of generated ones through their features, (N, D)
and (M, D) arrays from any feature map (the shipped nets of :mod:`pyro_vae.features`, or a
user's). Everything is computed in float64: a Fréchet distance is a small difference of large
traces, and float32 round-off would be of the size of the differences between good models.

A number is only comparable with another measured in the same feature space: these are not the
Inception-v3 FIDs of papers.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .errors import PyroVAEError


def _tensor(a, what: str, device=None) -> torch.Tensor:
    if isinstance(a, np.ndarray):
        a = torch.from_numpy(a)
    if not isinstance(a, torch.Tensor):
        raise PyroVAEError(f"{what} must be a tensor or an array, got {type(a).__name__}")
    if a.is_complex() or a.dtype == torch.bool:
        raise PyroVAEError(f"{what} must be real numbers, got {a.dtype}")
    a = a.to(device=device if device is not None else a.device, dtype=torch.float64)
    if not torch.isfinite(a).all():
        raise PyroVAEError(f"{what} holds NaN or infinite values")
    return a


def _features(a, what: str, device=None, least: int = 2) -> torch.Tensor:
    a = _tensor(a, what, device)
    if a.ndim != 2 or a.shape[1] < 1:
        raise PyroVAEError(f"{what} must be features of shape (N, D), got {tuple(a.shape)}")
    if a.shape[0] < least:
        raise PyroVAEError(f"{what} has {a.shape[0]} rows; at least {least} are needed")
    return a


def _sqrtm_psd(s: torch.Tensor) -> torch.Tensor:
    """The symmetric square root of a positive semi-definite matrix; eigenvalues that round-off
    made slightly negative are taken as zero."""
    w, v = torch.linalg.eigh((s + s.T) / 2)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def gaussian_frechet(mu1, cov1, mu2, cov2) -> float:
    """The squared Fréchet (2-Wasserstein) distance between N(mu1, cov1) and N(mu2, cov2):
    ``||mu1 - mu2||^2 + tr(cov1 + cov2 - 2 (cov1^{1/2} cov2 cov1^{1/2})^{1/2})``.

    The matrix square roots are symmetric eigendecompositions (``torch.linalg.eigh``) rather than
    scipy's general ``sqrtm``, whose complex round-off on near-singular covariances is a known
    source of wrong FIDs; the inner matrix is symmetric positive semi-definite by construction, so
    its eigenvalues are real and negative ones are round-off, clamped to zero. The result is
    clamped at zero for the same reason.

    Args:
        mu1: mean (D,) of the first Gaussian.
        cov1: covariance (D, D) of the first Gaussian, symmetric positive semi-definite.
        mu2: mean (D,) of the second Gaussian.
        cov2: covariance (D, D) of the second Gaussian.

    Returns:
        The distance as a Python float.

    Raises:
        PyroVAEError: shapes that do not match or values that are not finite.

    References:
        Dowson & Landau 1982, The Fréchet distance between multivariate normal distributions
        (J. Multivariate Analysis 12(3)).
        Heusel et al. 2017, GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
        Equilibrium, arXiv:1706.08500.
    """
    mu1 = _tensor(mu1, "mu1")
    device = mu1.device
    mu2, cov1, cov2 = (_tensor(t, name, device) for t, name in ((mu2, "mu2"), (cov1, "cov1"), (cov2, "cov2")))
    d = mu1.shape[0] if mu1.ndim == 1 else -1
    if mu1.ndim != 1 or mu2.shape != (d,) or cov1.shape != (d, d) or cov2.shape != (d, d):
        raise PyroVAEError(f"gaussian_frechet needs means (D,) and covariances (D, D) of one D; got "
                           f"{tuple(mu1.shape)}, {tuple(cov1.shape)}, {tuple(mu2.shape)}, {tuple(cov2.shape)}")
    root1 = _sqrtm_psd(cov1)
    inner = root1 @ cov2 @ root1
    eig = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp_min(0)
    diff = mu1 - mu2
    value = diff @ diff + torch.trace(cov1) + torch.trace(cov2) - 2 * eig.sqrt().sum()
    return max(float(value), 0.0)


def moments(a) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean (D,) and the unbiased covariance (D, D) of features (N, D), in float64."""
    a = _features(a, "features")
    mu = a.mean(0)
    centred = a - mu
    return mu, centred.T @ centred / (a.shape[0] - 1)


def frechet_distance(a, b) -> float:
    """The Fréchet distance of two feature sets (N, D) and (M, D): :func:`gaussian_frechet` of
    their means and unbiased covariances, as FID computes it from Inception features.

    Like FID it is biased upwards at finite N (the estimated covariances' noise adds to the trace
    term, by about D / N in units of the features' variance), so compare numbers computed from
    sets of the same sizes.

    Args:
        a: features (N, D) of one set, a tensor or an array; N >= 2.
        b: features (M, D) of the other set; M >= 2.

    Returns:
        The distance as a Python float (0 for a set against itself, up to round-off).

    Raises:
        PyroVAEError: sets of other shapes, of different D, or with non-finite values.

    References:
        Heusel et al. 2017, GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
        Equilibrium, arXiv:1706.08500.
    """
    a = _features(a, "the first feature set")
    b = _features(b, "the second feature set", a.device)
    if a.shape[1] != b.shape[1]:
        raise PyroVAEError(f"feature sets of different sizes: {a.shape[1]} and {b.shape[1]} features")
    return gaussian_frechet(*moments(a), *moments(b))


def _kth_neighbour_radii(x: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Each row's distance to its k-th nearest other row, in blocks of chunk x chunk distances
    (a running k-smallest per row), so memory does not grow with N^2."""
    n = x.shape[0]
    radii = torch.empty(n, dtype=x.dtype, device=x.device)
    for s in range(0, n, chunk):
        rows = x[s:s + chunk]
        best = None
        for t in range(0, n, chunk):
            d = torch.cdist(rows, x[t:t + chunk])
            if s == t:  # the point itself: its own distance is not a neighbour's, duplicates still are
                d.fill_diagonal_(math.inf)
            both = d if best is None else torch.cat([best, d], dim=1)
            best = both.topk(min(k, both.shape[1]), dim=1, largest=False).values
        radii[s:s + chunk] = best[:, k - 1]
    return radii


def _inside(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int) -> torch.Tensor:
    """Whether each point lies within at least one centre's ball (distance <= its radius)."""
    found = torch.zeros(points.shape[0], dtype=torch.bool, device=points.device)
    for s in range(0, points.shape[0], chunk):
        rows = points[s:s + chunk]
        hit = torch.zeros(rows.shape[0], dtype=torch.bool, device=points.device)
        for t in range(0, centres.shape[0], chunk):
            hit |= (torch.cdist(rows, centres[t:t + chunk]) <= radii[t:t + chunk]).any(dim=1)
        found[s:s + chunk] = hit
    return found


def precision_recall(real, fake, k: int = 3, chunk: int = 1000) -> dict:
    """Improved precision and recall of a fake feature set against a real one.

    Each real point gets a ball whose radius is the distance to its k-th nearest neighbour among
    the other real points; together the balls estimate the real manifold. Precision is the
    fraction of fake points inside at least one real ball (are the samples realistic?); recall is
    the fraction of real points inside at least one fake ball, the fake radii taken within the fake
    set (is the real variety covered?). Distances are computed in chunk x chunk blocks with
    ``torch.cdist``, so 10,000 x 10,000 points need a few MB.

    Args:
        real: real features (N, D), N > k.
        fake: fake features (M, D), M > k.
        k: the neighbour that sets a ball's radius (the paper's default is 3).
        chunk: rows per block of distances.

    Returns:
        ``{"precision", "precision_se", "recall", "recall_se"}``: the fractions and their binomial
        standard errors sqrt(p (1 - p) / n), n the number of points counted (M for precision, N
        for recall). The errors treat the points as independent trials given the balls, so they
        leave out the balls' own sampling noise.

    Raises:
        PyroVAEError: bad shapes, k < 1, sets of at most k points, or non-finite values.

    References:
        Kynkäänniemi et al. 2019, Improved Precision and Recall Metric for Assessing Generative
        Models, arXiv:1904.06991.
    """
    if not isinstance(k, int) or k < 1:
        raise PyroVAEError(f"k must be a positive integer, got {k!r}")
    if not isinstance(chunk, int) or chunk < 1:
        raise PyroVAEError(f"chunk must be a positive integer, got {chunk!r}")
    real = _features(real, "the real feature set", least=k + 1)
    fake = _features(fake, "the fake feature set", real.device, least=k + 1)
    if real.shape[1] != fake.shape[1]:
        raise PyroVAEError(f"feature sets of different sizes: {real.shape[1]} and {fake.shape[1]} features")
    precision = _inside(fake, real, _kth_neighbour_radii(real, k, chunk), chunk).double().mean().item()
    recall = _inside(real, fake, _kth_neighbour_radii(fake, k, chunk), chunk).double().mean().item()
    return {"precision": precision, "precision_se": math.sqrt(precision * (1 - precision) / fake.shape[0]),
            "recall": recall, "recall_se": math.sqrt(recall * (1 - recall) / real.shape[0])}
