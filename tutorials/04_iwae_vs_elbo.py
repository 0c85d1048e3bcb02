# %% [markdown]
# # 04 — The importance-weighted bound
#
# The ELBO is E_q[log w] with w = p(x, z) / q(z|x). Burda, Grosse & Salakhutdinov (2016,
# "Importance Weighted Autoencoders", arXiv:1509.00519) take the log *outside* an average of k
# weights instead:
#
#     L_k(x) = E[ log (1/k) sum_{i=1..k} p(x, z_i) / q(z_i|x) ],   z_1..z_k ~ q(z|x) independently.
#
# L_1 is the ELBO; by Jensen's inequality L_k <= L_{k+1} <= log p(x), and L_k -> log p(x) as
# k grows (for a guide whose weights have a finite variance, the gap shrinks like 1/k). Two uses:
#
# 1. **evaluation**: with a large k, L_k estimates log p(x) — the "NLL with K importance samples"
#    every table in this suite reports;
# 2. **training** (the IWAE): maximize L_k instead of the ELBO. The guide no longer has to put all
#    its mass inside the posterior — a wider q with a few good samples among k is fine — so the
#    model is less constrained by the guide: Burda et al. report a tighter NLL and more *active
#    units* than the VAE with the same networks.
#
# This tutorial sweeps k on a trained model to watch the bound tighten, then trains the same
# network under the ELBO and under L_k for several k and compares NLL, ELBO and active units.
#
# Run: `python tutorials/04_iwae_vs_elbo.py [--quick] [--out DIR]`. `--quick` uses the 8x8 digits
# and a short budget; the full run trains on MNIST when found (`$PYRO_VAE_DATA`, else
# `../shared/data` beside the repository) with Burda et al.'s 1-layer architecture
# (784-200-200-50, tanh) for 30 epochs per model — minutes on a GPU, an hour or so on a CPU
# (the k = 50 model costs about 50 times more per step than the VAE).

# %%
import dataclasses
import json
import time

import pyro

import pyro_vae
from pyro_vae import OBJECTIVES, RunConfig
from pyro_vae.evaluate import ACTIVE_UNIT_THRESHOLD, active_units, evaluate, per_datapoint
from pyro_vae.tutorial import Lesson

import matplotlib  # noqa: E402

matplotlib.use("Agg")  # figures are files; lesson.figure displays them in a notebook
import matplotlib.pyplot as plt  # noqa: E402

lesson = Lesson("04", "IWAE vs ELBO")
OUT = lesson.out
DEVICE = lesson.device
DATASET, DATA_DIR = lesson.dataset()

# %% [markdown]
# ## Two objectives, one word each
#
# The objective is a field of the run's config. `elbo` is Pyro's `Trace_ELBO`; `iwae` is Pyro's
# `RenyiELBO` with alpha = 0, which *is* L_k, with the k particles vectorized in one plate. Every
# sample site of the suite's models sits in one `pyro.plate("data", N)`, so the bound is computed
# per image, as the paper defines it — not as log of an average over the whole batch.
#
# Left unset, the objective of this VAE would be `meanfield`, the ELBO with its KL term in closed
# form (a diagonal Gaussian guide against N(0, I)). The VAE here names the Monte-Carlo `elbo`
# instead: L_1 with one sample is exactly that estimator, so the VAE and the IWAE runs differ in
# k alone.

# %%
for name in ("elbo", "meanfield", "iwae"):
    print(f"{name:9s} {OBJECTIVES[name].about}")

KS = [1, 10] if lesson.quick else [1, 5, 50]
base = RunConfig(dataset=DATASET, data_dir=str(DATA_DIR), latent_dim=16 if lesson.quick else 50,
                 hidden=[128, 128] if lesson.quick else [200, 200], activation="tanh",
                 epochs=30, batch_size=64 if lesson.quick else 128,
                 lr=2e-3 if lesson.quick else 1e-3, patience=30, seed=0, device=DEVICE)

# %% [markdown]
# ## Training
#
# The VAE (objective `elbo`) and one IWAE per k in the sweep, all with the same networks, seed,
# optimizer and number of epochs. k = 1 of the IWAE would be the VAE itself, so the VAE stands
# for it.

# %%
runs = {}
for k in KS:
    label = "VAE (ELBO)" if k == 1 else f"IWAE k={k}"
    config = dataclasses.replace(base, objective="elbo" if k == 1 else "iwae", particles=k,
                                 out=lesson.fresh("vae" if k == 1 else f"iwae{k}"))
    t0 = time.perf_counter()
    runs[label] = pyro_vae.load_run(pyro_vae.fit(config, progress=False if lesson.quick else None), DEVICE)
    print(f"{label:11s} trained in {time.perf_counter() - t0:.0f} s")

# %% [markdown]
# ## Watching the bound tighten
#
# Take the VAE and estimate L_k on test images for k from 1 to several thousand, each k with
# fresh samples. The curve rises steeply, then flattens toward log p(x): most of the gain comes
# from the first few dozen samples. The right panel plots the remaining gap, measured against
# the largest k, on log–log axes with a 1/k line: for large k the gap of L_k is about
# Var[w] / (2 k p(x)^2) (a delta-method expansion; Maddison et al. 2017, arXiv:1705.09279, and
# Rainforth et al. 2018, arXiv:1802.04537), so it approaches the 1/k slope once k is large enough
# for the average of the weights to be near its mean; before that it falls more slowly. Each
# point is a Monte-Carlo estimate with fresh samples, so neighbouring points can cross by a few
# hundredths of a nat, and the last points also carry the reference's own small bias.

# %%
data = pyro_vae.load_data(DATASET, DATA_DIR)
test = data.observations("test", DEVICE)  # binarized once, with the suite's fixed seed
n_sweep = len(test) if lesson.quick else min(1000, len(test))
K_MAX = 1000 if lesson.quick else 5000
sweep = [1, 2, 5, 10, 20, 50, 100, 200, 500]
vae = runs["VAE (ELBO)"].pair.eval()
bounds = {}
for k in sweep + [K_MAX]:
    pyro.set_rng_seed(k)
    bounds[k] = per_datapoint(vae.model, vae.guide, test[:n_sweep], samples=k)["log_px"].mean().item()
print(f"VAE on {n_sweep} test images: L_k in nats per image (L_1 = ELBO)")
for k in sweep:
    print(f"  k={k:<5d} L_k = {bounds[k]:8.3f}   gap to L_{K_MAX} = {bounds[K_MAX] - bounds[k]:.3f}")
print(f"  k={K_MAX:<5d} L_k = {bounds[K_MAX]:8.3f}")

fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
ax.semilogx(sweep + [K_MAX], [bounds[k] for k in sweep + [K_MAX]], "o-")
ax.set(xlabel="k (importance samples)", ylabel="L_k, nats per image", title="the bound rises with k")
ax.grid(alpha=0.3)
gaps = [bounds[K_MAX] - bounds[k] for k in sweep]
ax2.loglog(sweep, [max(g, 1e-4) for g in gaps], "o-", label=f"L_{K_MAX} - L_k")
ax2.loglog(sweep, [gaps[3] * sweep[3] / k for k in sweep], "k--", lw=0.8, label="slope 1/k")
ax2.set(xlabel="k", ylabel="gap, nats", title="the gap shrinks with k")
ax2.legend()
ax2.grid(alpha=0.3, which="both")
lesson.save(fig, "bound_vs_k.png")

# %% [markdown]
# ## IWAE against VAE
#
# Now the models trained under each objective. For each: the test ELBO (L_1), the NLL with K
# importance samples and its standard error, and the active units — latent dimensions whose
# posterior mean moves with the data, Var_x E_q[z_i|x] > 0.01 (Burda et al.'s definition).
#
# What to expect (Burda et al. 2016, table 1: the same 1-layer architecture on MNIST, NLL 86.76
# for the VAE, 85.54 for the IWAE with k = 5 and 84.78 with k = 50 after 3280 epochs):
#
# * the IWAE's **NLL is lower** — a better density model — and improves with k;
# * its **ELBO is lower** than the VAE's: it was not trained to make q(z|x) match the posterior,
#   only to make k samples of q good enough on average, so its guide is wider;
# * it has **more active units**: the ELBO charges the VAE for every nat by which q(z|x) misses
#   the posterior, so a latent dimension whose posterior q fits badly can be cheaper to switch
#   off; the importance-weighted bound forgives a poor q more, so more dimensions pay their way
#   (Burda et al. 2016, section 5).

# %%
n_eval = len(test) if lesson.quick or DEVICE == "cuda" else min(2000, len(test))
K_EVAL = 1000 if lesson.quick else 5000
rows = {}
for label, run in runs.items():
    pyro.set_rng_seed(0)
    rows[label] = evaluate(run.pair.model, run.pair.guide, test[:n_eval], iw_samples=K_EVAL)
print(f"{DATASET}, {n_eval} test images, nats per image")
print(f"{'model':11s} {'ELBO':>15s} {'NLL (K=' + str(K_EVAL) + ')':>17s} {'KL':>6s} {'active units':>13s}")
for label, r in rows.items():
    print(f"{label:11s} {r['elbo']:8.2f} ± {r['elbo_se']:.2f} {r['nll']:9.2f} ± {r['nll_se']:.2f} "
          f"{r['kl']:6.2f} {r['active_units']:>8d} / {r['latent_dim']}")
(OUT / "table.json").write_text(json.dumps(rows, indent=2) + "\n")
if lesson.quick:
    print("(--quick: small data and a short budget; the full run trains the paper's architecture on MNIST)")

# %% [markdown]
# The figure shows the statistic behind the active-unit count for each model: the variance over
# test images of the posterior mean of every latent dimension, sorted, on a log scale, with the
# 0.01 threshold. In a converged model the used and the unused units are orders of magnitude apart
# (Burda et al., figure 3): an unused unit's q(z_i|x) is the prior for every x, its posterior mean
# does not move at all. After a short training the separation is still forming, but the IWAE's
# curve already sits above the VAE's: it spreads information over more dimensions.

# %%
fig, ax = plt.subplots(figsize=(6.5, 4))
for label, run in runs.items():
    _, variances = active_units(run.pair.guide, test)
    ax.semilogy(sorted(variances.clamp(min=1e-8).tolist(), reverse=True), "o-", ms=3, label=label)
ax.axhline(ACTIVE_UNIT_THRESHOLD, color="k", ls="--", lw=0.8)
ax.set(xlabel="latent dimension (sorted)", ylabel="Var_x E_q[z_i | x]", title="active units")
ax.legend()
ax.grid(alpha=0.3)
lesson.save(fig, "active_units.png")

# %% [markdown]
# ## The guide of an IWAE is a worse ELBO guide
#
# The IWAE bound with k samples can be large even when each single q(z|x) is a poor fit. Compare
# L_1 and L_K of each trained model: the distance between them, log p(x) - ELBO = E_x KL(q||p(z|x)),
# is the price of using q as a posterior approximation. It is larger for the IWAE models — their
# guides are built to be good importance-sampling proposals, not good posteriors (Cremer, Morris &
# Duvenaud 2017, "Reinterpreting Importance-Weighted Autoencoders", arXiv:1704.02916).

# %%
for label, r in rows.items():
    print(f"{label:11s} log p(x) - ELBO = {-r['nll'] - r['elbo']:.2f} nats")

# %% [markdown]
# ## What to take away
#
# * Report a model's NLL with a large K and say K; an ELBO is a bound that can be far from it.
# * Training under L_k trades the guide's fit for a better model. Tighter is not always better for
#   the guide (Rainforth et al. 2018 show the signal-to-noise ratio of the guide's gradient falls
#   as k grows).
# * Tutorial 05 asks how well a guide fits, image by image, with importance-sampling diagnostics.

# %%
lesson.finish()
