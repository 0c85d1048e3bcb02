# %% [markdown]
# # 06 — The aggregate posterior: the variance law and collapsed units
#
# Every image has its own q(z|x). Averaged over the data they form the **aggregate posterior**
#
#     q(z) = E_x q(z|x),
#
# the distribution of codes the decoder actually sees in training. Sampling a VAE draws z from the
# prior p(z) = N(0, I) instead, so the closer q(z) is to the prior, the more the samples look like
# the data. Asperti (2019, "About generative aspects of Variational Autoencoders",
# arXiv:1909.10379) shows that the KL term enforces part of this match exactly, the **variance
# law**: for each latent dimension j of a Gaussian guide at an optimum,
#
#     E_x[ sigma_j(x)^2 ] + Var_x[ mu_j(x) ] = 1,
#
# i.e. the variance of q(z) in dimension j (within-image plus between-image) is the prior's.
# The higher moments of q(z) are not constrained. This tutorial measures the law, the moments, and
# the latent dimensions that **collapse** — switch off, with q(z_j|x) equal to the prior for every
# x — as the KL weight beta grows (the beta-VAE objective E_q[log p(x|z)] - beta KL,
# Higgins et al. 2017, ICLR).
#
# Run: `python tutorials/06_aggregate_posterior.py [--quick] [--out DIR]`. `--quick` trains three
# models (beta = 0.5, 1, 2) briefly on the 8x8 digits; the full run trains five (beta = 0.5 to 8) on
# MNIST when found (`$PYRO_VAE_DATA`, else `../shared/data` beside the repository).

# %%
import dataclasses
import time

import numpy as np
import pyro
import torch

import pyro_vae
from pyro_vae import RunConfig, plots
from pyro_vae.diagnose import aggregate_posterior
from pyro_vae.evaluate import evaluate
from pyro_vae.tutorial import Lesson

import matplotlib.pyplot as plt  # noqa: E402  (after pyro_vae.plots, which selects a file backend)

lesson = Lesson("06", "the aggregate posterior")
OUT = lesson.out
DEVICE = lesson.device
DATASET, DATA_DIR = lesson.dataset()

# %% [markdown]
# ## Why the law holds
#
# The decoder's first layer multiplies z by a weight matrix. Scale latent dimension j of every
# code by a factor a — mu_j(x) -> a mu_j(x), sigma_j(x) -> a sigma_j(x) — and divide column j
# of that matrix by a: the decoder computes exactly what it did, so the reconstruction term does
# not change. Only the KL term does. For a diagonal Gaussian guide and a N(0, 1) prior, dimension
# j contributes
#
#     KL_j(a) = E_x 1/2 [ a^2 sigma_j^2 + a^2 mu_j^2 - 1 - log(a^2 sigma_j^2) ],
#
# and at an optimum of the training objective its derivative at a = 1 must vanish:
# E_x[sigma_j^2 + mu_j^2] - 1 = 0. A shift of z_j, absorbed by the decoder's bias, gives
# E_x[mu_j] = 0 the same way; together, E_x[sigma_j^2] + Var_x[mu_j] = 1. The argument never uses
# the weight of the KL term, so the law holds for every beta — what beta changes is how the unit
# variance is split between the two terms, and how many dimensions are used at all.

# %%
BETAS = [0.5, 1.0, 2.0] if lesson.quick else [0.5, 1.0, 2.0, 4.0, 8.0]
base = RunConfig(dataset=DATASET, data_dir=str(DATA_DIR), latent_dim=16 if lesson.quick else 32,
                 hidden=[128, 128] if lesson.quick else [512, 512], activation="tanh", epochs=40 if lesson.quick else 60,
                 batch_size=64 if lesson.quick else 128, lr=2e-3 if lesson.quick else 1e-3, patience=40,
                 seed=0, device=DEVICE)
runs = {}
for beta in BETAS:
    label = f"beta={beta:g}"
    t0 = time.perf_counter()
    run_dir = pyro_vae.fit(dataclasses.replace(base, beta=beta, out=lesson.fresh(f"beta{beta:g}")),
                           progress=False if lesson.quick else None)
    runs[label] = pyro_vae.load_run(run_dir, DEVICE)
    print(f"{label:9s} trained in {time.perf_counter() - t0:.0f} s")

# %% [markdown]
# ## Measuring the law
#
# `aggregate_posterior(guide, x)` computes, on the test split, per latent dimension:
# E_x[sigma^2(x)], Var_x[mu(x)] and their sum (the variance law); the mean, variance, skewness
# and excess kurtosis of draws from q(z) (10 per image); and whether the dimension is active
# (Var_x[mu(x)] > 0.01, Burda et al. 2016, arXiv:1509.00519). The per-dimension KL term
# E_x KL(q(z_j|x) || N(0, 1)) says how many nats each dimension carries: a collapsed dimension
# carries none.

# %%
data = pyro_vae.load_data(DATASET, DATA_DIR)
test = data.observations("test", DEVICE)
n_eval = len(test) if lesson.quick or DEVICE == "cuda" else min(2000, len(test))  # the NLL is the costly part
stats, kl_per_dim, bounds = {}, {}, {}
for label, run in runs.items():
    guide = run.pair.guide.eval()
    stats[label] = aggregate_posterior(guide, test)
    with torch.no_grad():
        mu, var = guide.moments(test)
    kl_per_dim[label] = (0.5 * (var + mu ** 2 - 1 - var.log())).mean(0).cpu().numpy()
    pyro.set_rng_seed(0)
    bounds[label] = evaluate(run.pair.model, guide, test[:n_eval], iw_samples=100 if lesson.quick else 1000)

print(f"{DATASET} test split; ELBO and NLL at beta = 1 on {n_eval} images, nats per image")
print(f"{'model':9s} {'ELBO':>8s} {'recon':>8s} {'KL':>7s} {'NLL':>8s} {'active':>7s} "
      f"{'law, active dims':>17s} {'law, collapsed':>15s}")
for label, s in stats.items():
    law, active = np.array(s["variance_law"]), np.array(s["active"])
    b = bounds[label]
    fmt = lambda v: f"{v.mean():.3f} ± {v.std():.3f}" if v.size else "—"  # noqa: E731
    print(f"{label:9s} {b['elbo']:8.2f} {b['recon']:8.2f} {b['kl']:7.2f} {b['nll']:8.2f} "
          f"{active.sum():4d}/{active.size} {fmt(law[active]):>17s} {fmt(law[~active]):>15s}")

# %% [markdown]
# The variance law sits near 1 for the active dimensions of every model (mean ± spread over
# dimensions), and at 1 for the collapsed ones trivially: there q(z_j|x) is the prior itself,
# sigma^2 = 1 and mu = 0. Deviations of a few percent are the optimizer's, not the law's: the
# argument holds at an optimum, and training stops before one.
#
# The bars show the split for every dimension: the lower part is E[sigma^2(x)] (noise the guide
# adds), the upper part Var[mu(x)] (information about x). Active dimensions are mostly Var[mu];
# collapsed ones all E[sigma^2]. Larger beta switches more dimensions off and, in the ones it
# keeps, moves variance from Var[mu] to E[sigma^2]: noisier codes, fewer nats about each image.

# %%
lesson.figure(plots.variance_law_bars({k: {key: v[key] for key in ("variance_law", "mean_variance", "variance_of_means")}
                                for k, v in stats.items()}, OUT / "variance_law.png"))

# %% [markdown]
# ## What the KL weight does
#
# Each dimension's KL term, sorted, for each beta. The VAE spends most of its nats on a few
# dimensions and leaves the others near zero. Raising beta makes every nat
# of KL dearer relative to reconstruction, so fewer dimensions are worth using — the rate falls
# and the distortion (the reconstruction term) rises, a move along the rate–distortion curve of
# Alemi et al. (2018, "Fixing a Broken ELBO", arXiv:1711.00464). The total at beta = 1 is the KL
# column of the table above; the ELBO reported there is always the beta = 1 bound, which is why
# the beta > 1 models score lower. On the small 8x8 digits, with little information per image,
# beta = 2 keeps only a few dimensions. A larger beta — or the same one trained with the noisier
# Monte-Carlo KL (`objective="elbo"`) instead of the default closed-form KL — can switch every
# dimension off: the decoder then models the pixels without using z at all — complete
# **posterior collapse**, where the KL term is zero and the "autoencoder" encodes nothing.

# %%
fig, ax = plt.subplots(figsize=(6.5, 4))
for label, kl in kl_per_dim.items():
    ax.plot(np.sort(kl)[::-1], "o-", ms=3, label=f"{label}: {int((np.array(stats[label]['active'])).sum())} active")
ax.set(xlabel="latent dimension (sorted)", ylabel="E_x KL(q(z_j|x) || N(0,1)), nats", title="nats per dimension")
ax.legend()
ax.grid(alpha=0.3)
lesson.save(fig, "collapse.png")

# %% [markdown]
# ## Beyond two moments
#
# The law fixes the variance of q(z) in each dimension; with E[mu] = 0 the first two moments match
# the prior. Nothing fixes the rest. q(z) is a mixture of one Gaussian per image, and a mixture of
# clusters of digits need not be Gaussian: its skewness and excess kurtosis (both 0 for a normal)
# are free. Below, the numbers for the active dimensions, and histograms of q(z) against the
# N(0, 1) density (black) — for each model its 8 most informative dimensions, in decreasing order
# of KL (the column titles count positions, not dimension indices). How far the marginals stray
# depends on the data and the model; and marginals close to normal do not make the joint q(z)
# normal: the codes of different digits form clusters with empty space between them. The prior
# puts mass there — "holes" in the aggregate posterior — and samples from those regions decode to
# implausible images. A learned prior closes part of this mismatch (`prior="realnvp"`,
# Xu et al. 2019, arXiv:1905.13452).

# %%
for label, s in stats.items():
    active = np.array(s["active"])
    skew, kurt = np.array(s["aggregate_skewness"])[active], np.array(s["aggregate_excess_kurtosis"])[active]
    if active.any():
        print(f"{label:9s} active dims: mean {np.abs(np.array(s['aggregate_mean'])[active]).max():.3f} (max |.|), "
              f"variance {np.array(s['aggregate_variance'])[active].mean():.3f} (mean), "
              f"skewness in [{skew.min():.2f}, {skew.max():.2f}], "
              f"excess kurtosis in [{kurt.min():.2f}, {kurt.max():.2f}]")
# each model's most informative dimensions first
lesson.figure(plots.aggregate_histograms({label: s["samples"][:, np.argsort(kl_per_dim[label])[::-1]]
                                   for label, s in stats.items()}, OUT / "aggregate.png", max_dims=8))

# %% [markdown]
# ## What to take away
#
# * For a Gaussian guide, E[sigma^2] + Var[mu] = 1 in every dimension, whatever beta: the KL
#   term matches the first two moments of the aggregate posterior to the prior's.
# * Higher moments are free, so the aggregate posterior is not the prior; how far it is decides
#   how good the VAE's samples are.
# * The KL term switches off the dimensions the decoder does not need; a larger beta switches off
#   more. Collapsed dimensions satisfy the law trivially, with sigma^2 = 1.
# * Tutorial 07 removes the per-image variance altogether.

# %%
lesson.finish()
