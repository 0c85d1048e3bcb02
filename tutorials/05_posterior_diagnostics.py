# %% [markdown]
# # 05 — Did the guide work? Posterior diagnostics
#
# A trained VAE hands you q(z|x) for every image. Is it a good approximation of the model's
# posterior p(z|x)? The ELBO alone cannot say: it mixes model quality with guide quality, and in
# more than two dimensions the exact posterior cannot be put on a grid (tutorial 02 did that in
# 2-D). This tutorial answers the question the way the Bayesian workflow does, image by image:
#
# 1. draw a **reference posterior** for a few test images with NUTS, the decoder held fixed, and
#    check that the sampler itself converged (rank-normalized r-hat, bulk and tail ESS);
# 2. compute the **Pareto k-hat** of the importance weights p(x, z) / q(z|x), z ~ q (Yao, Vehtari,
#    Simpson & Gelman 2018, "Yes, but Did It Work?: Evaluating Variational Inference",
#    arXiv:1802.02538): one number per image that says whether q covers the posterior;
# 3. look: **pair plots** of q's draws over the reference draws, in ArviZ.
#
# All of this is `pyro_vae.diagnose.diagnose` (`pyro-vae diagnose` on the command line). To see
# the diagnostics fail as well as pass, the tutorial scores two guides against one model: the
# model's own guide, and a **mismatched** guide — trained with the same config and another seed,
# so it encodes images into a different latent space. It is a proper distribution over z, but not
# an approximation of *this* model's posterior: a stand-in for a guide that has lost touch with
# its decoder.
#
# Run: `python tutorials/05_posterior_diagnostics.py [--quick] [--out DIR]`. `--quick` uses the
# 8x8 digits, 4 test images and a short NUTS run (its convergence warnings are expected: read on);
# the full run uses MNIST when found (`$PYRO_VAE_DATA`, else `../shared/data` beside the
# repository), 8 images and the default NUTS settings.

# %%
import dataclasses
import shutil
import time
import warnings

import numpy as np
import pyro
import torch

import pyro_vae
from pyro_vae import RunConfig, diagnostics
from pyro_vae.diagnose import KHAT_BAD, KHAT_GOOD, diagnose
from pyro_vae.evaluate import log_weight_terms
from pyro_vae.tutorial import Lesson

import matplotlib  # noqa: E402

matplotlib.use("Agg")  # figures are files; lesson.figure displays them in a notebook
import matplotlib.pyplot as plt  # noqa: E402

lesson = Lesson("05", "posterior diagnostics")
OUT = lesson.out
DEVICE = lesson.device
DATASET, DATA_DIR = lesson.dataset()

# %% [markdown]
# ## Two runs
#
# A VAE with a 4-D (quick) or 8-D latent space and the mean-field `diag` guide, trained twice with
# different seeds. The first run's model is the one under study; its own guide should pass, the
# other run's guide should fail.

# %%
base = RunConfig(dataset=DATASET, data_dir=str(DATA_DIR), latent_dim=4 if lesson.quick else 8,
                 hidden=[128, 128] if lesson.quick else [512, 512], epochs=30 if lesson.quick else 50,
                 batch_size=64 if lesson.quick else 128, lr=2e-3 if lesson.quick else 1e-3, patience=10,
                 device=DEVICE)
run_dirs = []
for name, seed in (("diag", 0), ("other-seed", 1)):
    t0 = time.perf_counter()
    config = dataclasses.replace(base, seed=seed, out=lesson.fresh(name))
    run_dirs.append(str(pyro_vae.fit(config, progress=False if lesson.quick else None)))
    print(f"{name:10s} (seed {seed}) trained in {time.perf_counter() - t0:.0f} s")

# %% [markdown]
# ## Diagnose
#
# `diagnose(run_dirs, out, ...)` holds the first run's decoder and prior fixed and, for test
# images spread over the test split:
#
# * runs NUTS on p(z|x) ∝ p(z) p(x|z) for all images jointly (they are independent, so the joint
#   posterior is their product), chains one after another from overdispersed starts;
# * computes, per image and guide, the k-hat and importance-sampling ESS of `is_samples` draws of
#   q, the gap log p(x) - ELBO = KL(q(z|x) || p(z|x)) (log p(x) from the tightest K-sample
#   estimate), and distances between q's draws and the reference draws;
# * writes `diagnose.md`, `diagnose.json`, all draws as an ArviZ `InferenceData` in
#   `posteriors.nc`, and figures.
#
# The computation itself reads model and guides only through their Pyro traces, so it is not tied
# to the suite's runs: `pyro_vae.diagnose_guides(model, {name: guide}, x)` returns the same report
# for any model/guide pair of the model contract (tutorial 01), writing nothing.

# %%
diag_dir = OUT / "diagnose"
if diag_dir.exists():
    shutil.rmtree(diag_dir)
settings = (dict(images=4, chains=2, warmup=100, draws=100, iw_samples=1000, is_samples=1000) if lesson.quick
            else dict(images=8, chains=2, warmup=300, draws=300, iw_samples=5000, is_samples=2000))
t0 = time.perf_counter()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    report = diagnose(run_dirs, diag_dir, device=DEVICE, seed=0, **settings)
print(f"diagnosed {len(report['images'])} test images in {time.perf_counter() - t0:.0f} s")

# %% [markdown]
# ## First, the reference: did NUTS work?
#
# A reference that has not converged is not a reference. The split, rank-normalized r-hat
# (Vehtari et al. 2021, arXiv:1903.08008) compares the chains: above 1.01 they disagree. The bulk
# and tail effective sample sizes say how many independent draws the chains are worth, for the
# centre and for the tails of the distribution; below 100 per chain the quantiles are unreliable.
# `diagnose` warns in either case. The short quick run usually does trigger a warning — that is
# the check doing its job, and the answer is the one it prints: more warm-up and draws.

# %%
ref = report["reference"]
print(f"NUTS: {ref['chains']} chains x {ref['draws']} draws after {ref['warmup']} warm-up steps")
print(f"max r-hat {ref['max_rhat']:.3f}   min bulk ESS {ref['min_ess_bulk']:.0f}   "
      f"min tail ESS {ref['min_ess_tail']:.0f}")
for w in report["warnings"]:
    print("warning:", w)

# %% [markdown]
# The same numbers per image and latent dimension, from the saved `InferenceData`, with ArviZ's
# own summary: `posteriors.nc` holds one variable `z` with dims (chain, draw, source, image,
# z_dim), the reference and every guide side by side as values of `source`.

# %%
import arviz as az  # noqa: E402

idata = diagnostics.load_netcdf(diag_dir / "posteriors.nc")
print(idata.posterior)
first_image = report["images"][0]
print(f"\nreference posterior of test image {first_image}:")
print(az.summary(idata.posterior.sel(source="reference", image=first_image), kind="all"))

# %% [markdown]
# ## k-hat: does q cover the posterior?
#
# Importance sampling from q estimates anything about p(z|x) with weights w = p(x, z) / q(z|x).
# Fitting a generalized Pareto distribution to the largest weights gives its shape k-hat
# (Yao et al. 2018; Vehtari et al. 2024, "Pareto Smoothed Importance Sampling",
# arXiv:1507.02646):
#
# * **k-hat < 0.5**: the weights have finite variance. q covers the posterior; importance sampling
#   (and the K-sample NLL) built on q is reliable.
# * **0.5 – 0.7**: infinite variance, but PSIS still gives usable estimates.
# * **> 0.7**: a few draws carry all the weight. q misses posterior mass — its tails are too
#   light or it sits in the wrong place — and estimates built on q cannot be trusted.
#
# A guide trained by the ELBO minimizes KL(q || p), which punishes q for mass where p has little
# but not for missing p's mass, so it errs on the narrow side: k-hat is exactly the check for
# that failure. It answers a different question from the KL gap: a q a little too wide has a
# low k-hat and still a gap; a q too narrow in one direction can have a small gap and a high
# k-hat. Read both.

# %%
names = list(report["runs"])
print(f"{'image':>6s} {'guide':>11s} {'k-hat':>6s} {'ESS':>5s} {'KL gap':>7s} {'energy dist':>11s}   verdict")
for r in report["per_image"]:
    verdict = ("reliable" if r["khat"] < KHAT_GOOD else "usable with PSIS" if r["khat"] < KHAT_BAD
               else "q misses posterior mass")
    print(f"{r['image']:6d} {r['guide']:>11s} {r['khat']:6.2f} {r['ess_fraction']:5.2f} {r['kl_gap']:7.3f} "
          f"{r['energy_distance']:11.3f}   {verdict}")
for name in names:
    khats = [r["khat"] for r in report["per_image"] if r["guide"] == name]
    print(f"{name}: {sum(k < KHAT_BAD for k in khats)} of {len(khats)} images with k-hat < {KHAT_BAD}")
lesson.figure(diag_dir / "khat.png")

# %% [markdown]
# The mismatched guide fails everywhere, by a wide margin: its k-hat is well above 0.7, its
# importance-sampling ESS is a few percent of the draws, and its KL gap is many nats. The
# model's own mean-field guide passes on most images — and may still fail on some: an image whose
# posterior is skewed, correlated or bimodal is exactly where a diagonal Gaussian is too narrow.
# That is a reason to try a flow guide (tutorial 02) on this model, or to use PSIS rather than
# plain importance sampling for that image.

# %% [markdown]
# ## Where does the mass go? The importance weights
#
# k-hat summarizes the tail of the weights. Here are the weights themselves, for the model's own
# guide on each diagnosed image: the normalized weights sorted from the largest, as a cumulative
# share. With a good proposal the curve rises slowly (many draws share the weight); with a bad
# one the first few draws already hold almost everything. The weights come from
# `log_weight_terms`, the same function behind every bound of the suite, and
# `diagnostics.psis_khat` turns them into k-hat.
#
# These are fresh draws, so the recomputed k-hats differ from the table's. k-hat is itself an
# estimate: from 1000 draws it can move by a couple of tenths between runs, so a value near 0.5
# or 0.7 is borderline (draw more to decide), while the mismatched guide is beyond any such noise.

# %%
data = pyro_vae.load_data(DATASET, DATA_DIR)
x = data.observations("test", DEVICE)[report["images"]]  # the images diagnose scored
model = pyro_vae.load_run(run_dirs[0], DEVICE).pair.model.eval()
fig, ax = plt.subplots(figsize=(6.5, 4))
for name, run_dir in report["runs"].items():
    guide = pyro_vae.load_run(run_dir, DEVICE).pair.guide.eval()
    pyro.set_rng_seed(1)
    with torch.no_grad():
        t = log_weight_terms(model, guide, x, settings["is_samples"])
    log_w = (t["log_lik"] + t["log_prior"] - t["log_q"]).T.double().cpu().numpy()  # (images, draws)
    khat = diagnostics.psis_khat(log_w)
    for i in range(len(x)):
        share = np.cumsum(np.sort(np.exp(log_w[i] - log_w[i].max()))[::-1])
        ax.semilogx(np.arange(1, share.size + 1), share / share[-1], color="C0" if name == names[0] else "C3",
                    alpha=0.7, label=f"{name}" if i == 0 else None)
    print(f"{name:11s} k-hat recomputed with fresh draws: {np.round(khat, 2).tolist()}")
ax.set(xlabel="number of largest weights", ylabel="share of the total weight",
       title="importance weights p(x,z)/q(z|x), one line per image")
ax.legend()
ax.grid(alpha=0.3)
lesson.save(fig, "weights.png")

# %% [markdown]
# ## Pair plots
#
# Finally, look. For the first two diagnosed images, each panel shows the reference draws (grey)
# under one guide's draws (blue), on the first two latent dimensions, drawn with ArviZ's
# `plot_pair`. The model's own guide sits on the reference cloud, typically a little narrower;
# the mismatched guide sits somewhere else entirely.

# %%
for image in report["images"][:2]:
    lesson.figure(diag_dir / f"pairs_image{image}.png")

# %% [markdown]
# ## A checklist
#
# 1. **Reference converged?** r-hat ≤ 1.01, bulk and tail ESS ≥ 100 per chain. If not, nothing
#    below is meaningful: more warm-up, more draws.
# 2. **k-hat < 0.7 on the images you care about?** If not, q misses posterior mass there:
#    its K-sample NLL is unreliable for those images and its samples understate uncertainty.
# 3. **KL gap small?** It is the ELBO's slack, in nats; compare guides by it on the same model.
# 4. **Pair plots agree?** They show *how* q fails: too narrow, wrong correlation, one mode of two.
#
# `diagnose` also reports the aggregate posterior of each run over the whole test split, the
# subject of tutorial 06.

# %%
lesson.finish()
