"""Generative quality of a trained model: where its aggregate posterior and its prior disagree,
and what that costs in samples.

- **ELBO surgery** (Hoffman & Johnson 2016): the average KL term E_x KL(q(z|x) || p(z)) is the
  mutual information I_q(x; z) plus the marginal KL(q(z) || p(z)), q(z) = (1/N) sum_n q(z|x_n)
  the aggregate posterior over the N training images.
- **The prior hole**: the share of prior draws where q(z) is lower than at all but 1% of the
  training codes: places the prior sends samples to and no image is encoded.
- **Sample quality** in the feature space of a small classifier (``pyro_vae.features``): the
  Fréchet distance between features of samples and of test images, and precision and recall.

z stands for all latent sites together; everything is read through the model contract, so it
works for any model/guide pair whose guide can score a draw at any x (a guide that scores only
its own draws, planar and radial flows, gives sample quality only).

The estimator. S training images are drawn at random from a mixture set R of M training images
(all N by default) and one code z_s ~ q(z|x_s) each. log q(z_s) is estimated by

    q_hat(z_s) = (1/N) q(z_s|x_s) + (N - 1) / (N (M - 1)) sum_{m in R, m != s} q(z_s|x_m),

the minibatch estimate of Hoffman & Johnson's paper (unbiased for q(z_s) over the choice of R),
exact when M = N. Its log is biased low where M < N (Jensen's inequality): the marginal KL then
comes out too low and the mutual information too high, by O(1/M). The per-draw terms
log q(z_s|x_s) - log q_hat(z_s) and log q_hat(z_s) - log p(z_s) add up to the draw's KL term
exactly, and each estimate's standard error is that of the mean over the S draws.

References: Hoffman & Johnson 2016, "ELBO surgery: yet another way to carve up the variational
evidence lower bound", NIPS Workshop on Advances in Approximate Bayesian Inference; Rosca,
Lakshminarayanan & Mohamed 2018, "Distribution Matching in Variational Inference",
arXiv:1802.06847 (the prior hole); Heusel et al. 2017, arXiv:1706.08500 (FID);
Kynkäänniemi et al. 2019, arXiv:1904.06991 (precision and recall).
"""

from __future__ import annotations

import math

import torch

from . import contract
from .errors import PyroVAEError
from .evaluate import mean_se

HOLE_PERCENTILE = 0.01
DEFAULT_SAMPLES = 10000
DEFAULT_CODES = 2000


def _rows(y, idx):
    return None if y is None else y[idx]


@torch.no_grad()
def code_terms(model, guide, x: torch.Tensor, y=None) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """One draw z ~ q(z|x) per row: (site -> values (N, *event), log q(z|x) (N,), log p(z) (N,)),
    the densities summed over the latent sites."""
    terms = contract.site_terms(model, guide, x, y)
    discrete = terms["enumerated"] + [n for n in terms["discrete"] if n not in terms["enumerated"]]
    if discrete:
        raise PyroVAEError(f"the guide's site {discrete[0]!r} is discrete; the aggregate posterior here is "
                           "over continuous codes (give the labels, or marginalize the site in the guide)")
    latent = terms["latent"].values()
    return terms["values"], sum(q for _, q in latent), sum(p for p, _ in latent)


def diagonal_log_prob_matrix(guide, x: torch.Tensor, values: dict, y=None) -> torch.Tensor | None:
    """log q(z_s | x_m) (S, M) by matrix products, for the suite's single-site guides whose q is
    a diagonal Normal; None for any other pair (then :func:`contract.guide_log_prob`, which a
    test shows equal to this).

    Why: scored through the trace, the Normal broadcast over S x M pairs recomputes log sigma and
    the squared residual for every pair; expanding the square into three (S, L) x (L, M) products
    made the aggregate posterior of 50,000 MNIST codes take seconds instead of minutes.
    """
    name = getattr(guide, "site_name", None)
    if name is None or set(values) != {name} or not callable(getattr(guide, "dist", None)):
        return None
    q = guide.dist(x, y)
    base = getattr(q, "base_dist", None)
    normal = torch.distributions.Normal
    if not (isinstance(q, torch.distributions.Independent) and isinstance(base, normal)
            and type(base).log_prob is normal.log_prob and q.reinterpreted_batch_ndims == 1 and base.loc.dim() == 2):
        return None
    loc, scale = base.loc.double(), base.scale.double()
    z = values[name].double()
    precision = scale.pow(-2)
    square = z.pow(2) @ precision.T - 2 * z @ (loc * precision).T + (loc.pow(2) * precision).sum(-1)
    return -0.5 * square - scale.log().sum(-1) - 0.5 * loc.shape[-1] * math.log(2 * math.pi)


@torch.no_grad()
def aggregate_log_sum(guide, x: torch.Tensor, values: dict, y=None, exclude: torch.Tensor | None = None,
                      max_elements: int = 2**23) -> torch.Tensor:
    """logsumexp over the rows m of ``x`` of log q(z_s | x_m), shape (S,), for draws ``values``
    (site -> (S, *event)); ``exclude[s]`` names a row left out of draw s's sum (-1: none)."""
    s = next(iter(values.values())).shape[0]
    per_draw = 4 * sum(int(v[0].numel()) for v in values.values())
    block = max(1, max_elements // max(1, s * per_draw))
    total = torch.full((s,), -math.inf, dtype=torch.float64, device=x.device)
    for start in range(0, x.shape[0], block):
        rows = torch.arange(start, min(start + block, x.shape[0]), device=x.device)
        log_q = diagonal_log_prob_matrix(guide, x[rows], values, _rows(y, rows))
        if log_q is None:
            log_q = contract.guide_log_prob(guide, x[rows], values, _rows(y, rows)).double()
        if exclude is not None:
            log_q = log_q.masked_fill(exclude[:, None] == rows[None, :], -math.inf)
        total = torch.logaddexp(total, torch.logsumexp(log_q, 1))
    return total


def _codes(model, guide, x, y, idx, batch_size):
    parts = [code_terms(model, guide, x[idx[i:i + batch_size]], _rows(y, idx[i:i + batch_size]))
             for i in range(0, len(idx), batch_size)]
    values = {name: torch.cat([p[0][name] for p in parts]) for name in parts[0][0]}
    return values, torch.cat([p[1] for p in parts]).double(), torch.cat([p[2] for p in parts]).double()


@torch.no_grad()
def surgery(model, guide, x: torch.Tensor, y=None, codes: int = DEFAULT_CODES, mixture: int | None = None,
            generator: torch.Generator | None = None, batch_size: int = 500) -> dict:
    """ELBO surgery on the training images ``x`` (and labels ``y`` where the pair takes them):
    ``kl``, ``mutual_information`` and ``marginal_kl`` in nats per datapoint with their ``_se``,
    from ``codes`` draws and a mixture set of ``mixture`` images (None: all); see the module's
    docstring for the estimator. Also returns ``log_q_codes`` (the draws' log q_hat(z)) and
    ``mixture_rows`` for :func:`prior_hole`."""
    n = x.shape[0]
    m = n if mixture is None else min(mixture, n)
    if m < 2 or codes < 1:
        raise PyroVAEError(f"ELBO surgery needs at least 2 mixture images and 1 code, got {m} and {codes}")
    order = torch.randperm(n, generator=generator)
    mix = order[:m].to(x.device)
    drawn = torch.arange(min(codes, m), device=x.device)  # positions in the mixture set
    values, log_q_self, log_p = _codes(model, guide, x, y, mix[drawn], batch_size)
    others = aggregate_log_sum(guide, x[mix], values, _rows(y, mix), exclude=drawn)
    own = log_q_self - math.log(n)
    log_q_hat = torch.logaddexp(own, others + math.log((n - 1) / (n * (m - 1))))
    mi, marginal, kl = log_q_self - log_q_hat, log_q_hat - log_p, log_q_self - log_p
    out = {"codes": int(drawn.numel()), "mixture_images": m, "train_images": n, "exact_mixture": m == n}
    for key, v in (("mutual_information", mi), ("marginal_kl", marginal), ("kl", kl)):
        out[key], out[key + "_se"] = mean_se(v)
    out["log_q_codes"], out["mixture_rows"] = log_q_hat, mix
    return out


@torch.no_grad()
def prior_hole(model, guide, x: torch.Tensor, y, log_q_codes: torch.Tensor, mixture_rows: torch.Tensor,
               draws: int = DEFAULT_CODES, values: dict | None = None, batch_size: int = 500) -> dict:
    """The share of ``draws`` prior draws (all latent sites, from the model; ``values`` fixes some
    sites, e.g. the top one to N(0, I) draws) whose q_hat(z) is below the 1st percentile of the
    training codes' ``log_q_codes``: ``fraction`` with its binomial ``se``."""
    rows = mixture_rows[torch.arange(draws, device=x.device) % mixture_rows.numel()]
    parts = []
    for i in range(0, draws, batch_size):
        fixed = None if values is None else {k: v[i:i + batch_size] for k, v in values.items()}
        parts.append(contract.prior_draws(model, x[rows[i:i + batch_size]], _rows(y, rows[i:i + batch_size]), fixed))
    prior_values = {name: torch.cat([p[name] for p in parts]) for name in parts[0]}
    log_q = aggregate_log_sum(guide, x[mixture_rows], prior_values, _rows(y, mixture_rows)) - math.log(mixture_rows.numel())
    threshold = torch.quantile(log_q_codes, HOLE_PERCENTILE).item()
    fraction = (log_q < threshold).double().mean().item()
    return {"fraction": fraction, "se": math.sqrt(fraction * (1 - fraction) / draws), "threshold": threshold}


def standard_top(model, n: int, device) -> dict | None:
    """N(0, I) draws for the model's prior site, where the model's prior is another one (the
    prior hole of the standard prior, beside the run's own); None otherwise."""
    from .priors import StandardNormal

    prior, name = getattr(model, "prior", None), getattr(model, "prior_site", None)
    if prior is None or name is None or type(prior) is StandardNormal:
        return None
    event = prior().event_shape
    return {name: torch.randn((n,) + tuple(event), device=device)}


@torch.no_grad()
def sample_images(model, x_like: torch.Tensor, n: int, y_like=None, batch_size: int = 500, decode=None) -> torch.Tensor:
    """``n`` images the model generates (rows of ``x_like`` give only the shape, cycled): a draw of
    p(x|z) for discrete data (binary or 8-bit, as the test images are), its mean for continuous
    data. ``decode`` maps the model's outputs to images (a two-stage model's first stage); its
    outputs (codes) are then always drawn: the mean of p(z|u) of a second stage that learned
    little would give one code for every u."""
    out = []
    for start in range(0, n, batch_size):
        rows = torch.arange(start, min(start + batch_size, n), device=x_like.device) % x_like.shape[0]
        fn = contract.observation(model, x_like[rows], _rows(y_like, rows))
        made = fn.sample() if fn.support.is_discrete or decode is not None else fn.mean
        out.append(made if decode is None else decode(made))
    return torch.cat(out)


def feature_metrics(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> dict:
    """FID, precision and recall (k-NN manifolds) of feature sets ``real`` and ``fake``."""
    from .sample_quality import frechet_distance, precision_recall

    return {"fid": frechet_distance(real, fake), **precision_recall(real, fake, k=k)}


def unavailable(reason: str, keys) -> dict:
    return {key: reason for key in keys}


SURGERY_KEYS = ("mutual_information", "mutual_information_se", "marginal_kl", "marginal_kl_se", "kl", "kl_se")


@torch.no_grad()
def assess(model, guide, x_train: torch.Tensor, x_test: torch.Tensor, features=None, y_train=None, y_test=None,
           samples: int = DEFAULT_SAMPLES, codes: int = DEFAULT_CODES, mixture: int | None = None, seed: int = 0,
           conditional: bool = False, decode=None, x_like: torch.Tensor | None = None, batch_size: int = 500) -> dict:
    """Every measure of this module for any (model, guide) pair of the model contract.

    ``x_train`` defines the aggregate posterior, ``x_test`` the images samples are compared with;
    ``features`` maps images (n, *shape) to features (n, D) (None: no sample-quality measures);
    ``y_*`` are labels the pair takes (with ``conditional``, samples are drawn at the test labels);
    ``decode`` maps the model's outputs to images (a second stage's codes through the first stage),
    and then ``x_like`` are rows of the model's own observations, shaping its samples.
    A measure that cannot be taken is left out, its reason under ``unavailable``.
    """
    modules = [m for m in (model, guide) if isinstance(m, torch.nn.Module)]
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        return _assess(model, guide, x_train, x_test, features, y_train, y_test, samples, codes, mixture, seed,
                       conditional, decode, x_test if x_like is None else x_like, batch_size)
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


def _assess(model, guide, x_train, x_test, features, y_train, y_test, samples, codes, mixture, seed, conditional,
            decode, x_like, batch_size):
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    out, missing = {"samples": samples}, {}
    try:
        cut = surgery(model, guide, x_train, y_train, codes, mixture, generator, batch_size)
    except PyroVAEError as err:
        missing.update(unavailable(str(err), ("mutual_information", "marginal_kl", "prior_hole")))
        cut = None
    if cut is not None:
        out.update({k: cut[k] for k in SURGERY_KEYS})
        out["surgery"] = {k: cut[k] for k in ("codes", "mixture_images", "train_images", "exact_mixture")}
        hole = prior_hole(model, guide, x_train, y_train, cut["log_q_codes"], cut["mixture_rows"], cut["codes"],
                          batch_size=batch_size)
        out["prior_hole"], out["prior_hole_se"] = hole["fraction"], hole["se"]
        top = standard_top(model, cut["codes"], x_train.device)
        if top is not None:
            standard = prior_hole(model, guide, x_train, y_train, cut["log_q_codes"], cut["mixture_rows"],
                                  cut["codes"], values=top, batch_size=batch_size)
            out["prior_hole_standard"], out["prior_hole_standard_se"] = standard["fraction"], standard["se"]
    if features is None:
        missing.update(unavailable("no feature network for these images (give --features)", ("fid", "precision", "recall")))
    else:
        fake = sample_images(model, x_like, samples, y_test if conditional else None, batch_size, decode)
        real = x_test[:samples]
        out.update(feature_metrics(features(real), features(fake)))
        out["real_images"], out["sample_images"] = int(real.shape[0]), int(fake.shape[0])
    if missing:
        out["unavailable"] = missing
    return out
