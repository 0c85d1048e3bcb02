# %% [markdown]
# # 01 — A variational autoencoder in Pyro
#
# A variational autoencoder (Kingma & Welling 2014, "Auto-Encoding Variational Bayes",
# arXiv:1312.6114) is two programs:
#
# * the **model** p(z) p(x|z): draw a latent code z from a prior N(0, I), push it through a
#   decoder network, and score the image x under the likelihood the decoder's output defines;
# * the **guide** q(z|x): an encoder network that maps an image to a distribution over the codes
#   that could have produced it — the approximate posterior.
#
# In Pyro both are ordinary Python functions with `pyro.sample` statements. Training maximizes
# the evidence lower bound (ELBO)
#
#     log p(x) >= ELBO(x) = E_q(z|x)[ log p(x|z) ] - KL( q(z|x) || p(z) ),
#
# in nats per image, jointly over decoder and encoder weights. This tutorial builds a VAE with
# `pyro_vae`, opens up its model and guide, computes the ELBO by hand and checks it against
# Pyro's, shows why the reparameterization trick matters, trains a 2-D latent VAE and looks at
# what it learned, then contrasts a Bernoulli with a Gaussian pixel likelihood.
#
# Run it as `python tutorials/01_vae_in_pyro.py [--quick] [--out DIR]`, or open it as a notebook
# (jupytext reads the `# %%` cells). `--quick` trains briefly on scikit-learn's 8x8 digits; the
# full run trains on MNIST when it is found in the data folder (`$PYRO_VAE_DATA`, else
# `../shared/data` beside the repository).

# %%
import dataclasses
import inspect
import json
import time

import pyro
import torch
from pyro import poutine
from pyro.distributions.kl import kl_divergence
from pyro.poutine.util import site_is_subsample

import pyro_vae
from pyro_vae import RunConfig, plots
from pyro_vae.contract import ScaleLatents
from pyro_vae.evaluate import evaluate
from pyro_vae.tutorial import Lesson

import matplotlib.pyplot as plt  # noqa: E402  (after pyro_vae.plots, which selects a file backend)
from matplotlib.patches import Ellipse  # noqa: E402

lesson = Lesson("01", "a VAE in Pyro")
OUT = lesson.out
DEVICE = lesson.device
DATASET, DATA_DIR = lesson.dataset()

# %% [markdown]
# ## The data
#
# Both datasets are grey-level digit images. Their default likelihood is Bernoulli, which needs
# binary pixels, so the training images are **dynamically binarized**: each time an image is used,
# every pixel is redrawn as a coin flip with the grey level (scaled to [0, 1]) as its probability.
# Validation and test images are binarized once, with a fixed seed, so every bound in the suite is
# computed on the same binary test set.
#
# Observations keep their shape, (N, C, H, W): one channel of 8x8 (digits) or 28x28 (MNIST)
# pixels. `data.x[split]` is the split as stored — grey levels in bytes, 0..16 for the digits,
# 0..255 for MNIST — which is not what the model scores, since training images are binarized
# afresh per batch. `data.observations(split)` gives the split as the model scores it (floats,
# binarized with the fixed seed), `data.labels(split)` the class labels, and
# `data.batches(split, batch_size)` yields `(x, y)` pairs for training.

# %%
data = pyro_vae.load_data(DATASET, DATA_DIR)
print(f"{DATASET}: image shape {data.obs_shape}, likelihood {data.likelihood}, binarization {data.binarize}")
print("stored:", {split: (tuple(x.shape), str(x.dtype)) for split, x in data.x.items()})
test = data.observations("test", DEVICE)
print(f"scored: test {tuple(test.shape)} {test.dtype}, values {sorted(test.unique().tolist())}; "
      f"labels {tuple(data.labels('test').shape)}")

# %% [markdown]
# ## The model and the guide
#
# `pyro_vae.build` turns a `RunConfig` into a model/guide pair. Every model and guide of the suite
# keeps one contract, and any Pyro pair that keeps it works with the suite's evaluation and
# diagnostics:
#
# * they are called as `model(x, y=None)` and `guide(x, y=None)`: `x` a batch of observations in
#   their own shape (N, C, H, W), `y` optional side information per datapoint — the class label
#   of the conditional VAE of tutorial 08, `None` here;
# * every per-datapoint sample site sits inside one `pyro.plate("data", N)`. The plate declares
#   the N images independent, which is what makes every bound a sum of per-image terms, and lets
#   the evaluation read one log-density per image off the traces;
# * the model holds no KL weight. The beta of a beta-VAE, E_q[log p(x|z)] - beta KL, is applied
#   from outside: `contract.ScaleLatents(beta)` scales every latent site of model and guide alike,
#   and the training losses wrap both in it. So a model written by hand needs to know nothing of
#   beta: the same model trains at any beta or under a KL warm-up, and is evaluated at beta = 1.
#
# Here is the whole model: a prior sample site `z` and an observed site `x` in the plate (`_decode`
# runs the decoder network, which in the conditional VAE also receives y).

# %%
config = RunConfig(dataset=DATASET, data_dir=str(DATA_DIR), latent_dim=2, hidden=[256, 256],
                   likelihood=data.likelihood, device="cpu")
pair = pyro_vae.build(config, data.obs_shape)
print(inspect.getsource(pyro_vae.VAE.forward))

# %% [markdown]
# The guide (`diag`, the mean-field Gaussian of Kingma & Welling) has the same site `z` in the same
# plate, with q(z|x) = N(mu(x), diag sigma(x)^2) from the encoder: `forward` is shared by every
# guide of the suite, and `dist` is what each family defines. Tracing the guide and then
# replaying the model on the guide's z gives every site with its distribution and shape: the
# batch dimension is the plate; z has an event shape of (2,), x the shape of one image, (1, 8, 8)
# or (1, 28, 28) — the likelihood scores the image as it is, no flattening.
#
# Last, the KL weight from outside: traced under `ScaleLatents(0.5)`, the latent site `z` carries
# the scale 0.5 and the observed site `x` keeps 1.

# %%
print(inspect.getsource(type(pair.guide).forward))
print(inspect.getsource(type(pair.guide).dist))
x = data.observations("test")[:16]
guide_trace = poutine.trace(pair.guide).get_trace(x)
model_trace = poutine.trace(poutine.replay(pair.model, trace=guide_trace)).get_trace(x)
guide_trace.compute_log_prob()
model_trace.compute_log_prob()
print("guide trace:\n" + guide_trace.format_shapes())
print("model trace:\n" + model_trace.format_shapes())
with ScaleLatents(0.5):
    scaled = poutine.trace(pair.model).get_trace(x)
print("site scales under ScaleLatents(0.5):",
      {name: float(site["scale"]) for name, site in scaled.nodes.items()
       if site["type"] == "sample" and not site_is_subsample(site)})

# %% [markdown]
# ## The ELBO, by hand and by Pyro
#
# With one draw z ~ q(z|x) the ELBO estimate is log p(x|z) + log p(z) - log q(z|x): the model
# trace's log-probabilities minus the guide trace's. Pyro's `Trace_ELBO` computes exactly this
# (as a loss: its negative), and so does the suite's `loss_fn("elbo", ...)`, the Monte-Carlo
# objective. With the same random seed all three draw the same z and agree to float precision —
# the suite's model and guide are plain Pyro programs.
#
# For this pair the KL term need not be sampled at all: between a diagonal Gaussian q(z|x) and
# the N(0, I) prior it has a closed form. Pyro's `TraceMeanField_ELBO` (the suite's `meanfield`)
# samples only the reconstruction term, log p(x|z) - KL(q(z|x) || p(z)). From the same z its value
# differs from the others; over many draws both have the same mean, the ELBO, and the analytic
# KL removes part of the noise — which is why it is the suite's default wherever every latent
# site has such a KL.

# %%
def elbo_by_hand(seed, analytic_kl=False):
    pyro.set_rng_seed(seed)
    g = poutine.trace(pair.guide).get_trace(x)
    m = poutine.trace(poutine.replay(pair.model, trace=g)).get_trace(x)
    if analytic_kl:
        total = (m.nodes["x"]["fn"].log_prob(x) - kl_divergence(g.nodes["z"]["fn"], m.nodes["z"]["fn"])).sum()
    else:
        total = m.log_prob_sum() - g.log_prob_sum()
    return (total / x.shape[0]).item()


def by_suite(objective, seed):
    pyro.set_rng_seed(seed)
    return -pyro_vae.loss_fn(objective, pair.model, pair.guide)(x, torch.tensor(1.0)).item() / x.shape[0]


pyro.set_rng_seed(1)
by_pyro = -pyro.infer.Trace_ELBO().loss(pair.model, pair.guide, x) / x.shape[0]
print(f"ELBO of the untrained VAE, one sample, nats per image: by hand {elbo_by_hand(1):.4f}, "
      f"Trace_ELBO {by_pyro:.4f}, pyro_vae.loss_fn('elbo') {by_suite('elbo', 1):.4f}")
print(f"with the KL in closed form, same z: by hand {elbo_by_hand(1, analytic_kl=True):.4f}, "
      f"pyro_vae.loss_fn('meanfield') {by_suite('meanfield', 1):.4f}")
draws = {name: torch.tensor([by_suite(name, seed) for seed in range(200)]) for name in ("elbo", "meanfield")}
for name, values in draws.items():
    print(f"{name:9s} over 200 draws: mean {values.mean():.3f} ± {values.std() / 200 ** 0.5:.3f}, "
          f"sd of one draw {values.std():.3f}")

# %% [markdown]
# ## Training
#
# `pyro_vae.fit` trains model and guide together with Adam on minibatches, one sample of z per
# image, evaluates the validation ELBO after every epoch, keeps the best epoch's checkpoint, and
# stops early when the validation ELBO stops improving. It returns the run directory, which holds
# the config, checkpoints, per-epoch metrics and a few figures of its own. The config names no
# objective, so `fit` chooses when training starts: `meanfield` here, since the one latent site
# has a closed-form KL to its prior; a guide or prior without one (a flow, a learned prior) gets
# the Monte-Carlo `elbo`. The choice is stored in the run's config.
#
# The latent space is 2-D, far too small for a good density model of digits, but it can be drawn,
# which is what this tutorial is after.

# %%
EPOCHS = 40 if lesson.quick else 100
bernoulli_config = RunConfig(dataset=DATASET, data_dir=str(DATA_DIR), latent_dim=2, hidden=[256, 256] if lesson.quick
                             else [512, 512], epochs=EPOCHS, patience=10 if lesson.quick else 20, seed=0, device=DEVICE,
                             out=lesson.fresh("bernoulli"))
t0 = time.perf_counter()
run_dir = pyro_vae.fit(bernoulli_config, progress=False if lesson.quick else None)
print(f"trained {run_dir} in {time.perf_counter() - t0:.0f} s")
run = pyro_vae.load_run(run_dir, DEVICE)  # the best epoch's checkpoint
print(f"objective: {run.config.objective}")
history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
best = max(history, key=lambda h: h["valid_elbo"])
print(f"{len(history)} epochs; best validation ELBO {best['valid_elbo']:.2f} nats at epoch {best['epoch']}")

# %% [markdown]
# ## Why reparameterize?
#
# Training just followed the gradient of a one-sample estimate: one z per image for the
# reconstruction term, the KL term in closed form. The gradient of E_q[f(z)]
# with respect to the encoder's output mu has two unbiased Monte-Carlo estimators. The
# **score-function** (REINFORCE) estimator f(z) * d/dmu log q(z|x) needs only samples of z and
# values of f. The **reparameterized** one writes z = mu + sigma * eps with eps ~ N(0, I), so
# that f(mu + sigma * eps) is a differentiable function of mu, and autograd differentiates
# straight through the decoder (Kingma & Welling 2014, section 2.4). Pyro uses it for every
# distribution with `rsample` (`has_rsample=True`), as every guide of the suite has.
#
# Below, for one test image, each estimator is evaluated on the same 2000 draws of eps, with
# f = log p(x, z) - log q(z|x) (the ELBO integrand), for the untrained and the trained VAE. The
# table gives the per-sample variance of each estimator, summed over the two coordinates of mu.
# Plain REINFORCE is hundreds to thousands of times noisier: f is tens of nats below zero, and
# its size multiplies the noise of the score. Subtracting a constant baseline (here the best one, the
# mean of f) removes most of that, and near the optimum in 2-D the baselined estimator even comes
# out ahead — when q is close to the true posterior, f is nearly constant in z, so its score
# term vanishes (the same observation behind "sticking the landing", Roeder et al. 2017,
# arXiv:1703.09194). Reparameterization needs no baseline, wins at the start of training, and its
# margin grows with the latent dimension; that is why a VAE trains with one sample per image.

# %%
def gradient_variances(model, guide, x1, samples=2000):
    """Per-sample variance (summed over mu's coordinates) of three estimators of d ELBO / d mu."""
    q = guide.dist(x1)
    dim = q.event_shape[0]
    eps = torch.randn(samples, dim, device=x1.device)
    mu = q.mean.detach().expand(samples, dim).clone().requires_grad_()
    sigma = q.stddev.detach()

    def integrand(z, mu):
        log_prior, log_lik = model.log_terms(x1, z)  # log p(z), log p(x|z): the model's two sites
        return log_prior + log_lik - torch.distributions.Normal(mu, sigma).log_prob(z).sum(-1)

    # each row of mu drives one sample, so the gradient of the sum gives per-sample gradients
    reparam = torch.autograd.grad(integrand(mu + sigma * eps, mu).sum(), mu)[0]
    with torch.no_grad():
        z = mu + sigma * eps
        f = integrand(z, mu)
        score = (z - mu) / sigma ** 2
        plain, baselined = f[:, None] * score, (f - f.mean())[:, None] * score
    return {name: g.var(0).sum().item() for name, g in
            (("reparameterized", reparam), ("REINFORCE", plain), ("REINFORCE - baseline", baselined))}


x1 = test[:1]
print("q(z|x) is", type(run.pair.guide.dist(x1).base_dist).__name__, "with has_rsample =",
      run.pair.guide.dist(x1).has_rsample)
pyro.set_rng_seed(0)
table = {"untrained": gradient_variances(pair.model.to(DEVICE), pair.guide.to(DEVICE), x1),
         "trained": gradient_variances(run.pair.model, run.pair.guide, x1)}
print(f"{'per-sample variance':22s} {'untrained':>10s} {'trained':>10s}")
for name in table["trained"]:
    print(f"{name:22s} {table['untrained'][name]:10.3g} {table['trained'][name]:10.3g}")

# %% [markdown]
# ## How good is it?
#
# `evaluate` reports, in nats per test image with every constant included:
#
# * the **ELBO** with its two terms — the expected reconstruction log-likelihood and the KL from
#   q(z|x) to the prior, the number of nats the code costs;
# * the **NLL**, -log p(x) estimated by importance sampling with K draws from the guide
#   (Burda et al. 2016, arXiv:1509.00519), always given with K and its standard error. It is
#   smaller than -ELBO: the difference is the average KL(q(z|x) || p(z|x)), how far the guide is
#   from the model's true posterior;
# * the number of **active units**, latent dimensions whose posterior mean varies with x.

# %%
n_eval, k_eval = (len(test), 500) if lesson.quick else (min(2000, len(test)), 1000)
pyro.set_rng_seed(0)
result = evaluate(run.pair.model, run.pair.guide, test[:n_eval], iw_samples=k_eval)
print(f"test images     {result['n']}")
print(f"ELBO            {result['elbo']:8.2f} ± {result['elbo_se']:.2f}")
print(f"  reconstruction{result['recon']:8.2f}")
print(f"  KL            {result['kl']:8.2f}")
print(f"{'NLL (K=' + str(k_eval) + ')':16s}{result['nll']:8.2f} ± {result['nll_se']:.2f}")
print(f"active units    {result['active_units']} / {result['latent_dim']}")

# %% [markdown]
# ## What it learned
#
# **Samples** are decoded means E[x|z] for z drawn from the prior; **reconstructions** alternate a
# test image with the decoded mean of one draw from its q(z|x). With two latent dimensions the
# samples are blurry and the reconstructions keep the digit's identity and rough shape but not
# its details: two numbers cannot say more.

# %%
model, guide = run.pair.model.eval(), run.pair.guide.eval()
pyro.set_rng_seed(0)
lesson.figure(plots.image_grid(model.sample(64), data.obs_shape, OUT / "samples.png", title="samples from p(z) p(x|z)"))
with torch.no_grad():
    xs = test[:32]
    recon = model.decode_mean(guide.dist(xs).sample())
lesson.figure(plots.image_grid(torch.stack([xs, recon], 1).flatten(0, 1), data.obs_shape,
                               OUT / "reconstructions.png", title="test image | reconstruction"))

# %% [markdown]
# **The latent space.** Below, 100 test digits are drawn as their posterior q(z|x): the dot is
# the mean mu(x), the ellipse one standard deviation sigma(x) on each axis, coloured by the digit's
# label. The classes occupy regions of the plane without being told the labels, and each image is
# a small cloud, not a point — the guide says how uncertain the code of each image is. Together
# the clouds fill roughly a unit disc: the KL term pulls the average of all q(z|x) toward the
# prior N(0, I) (tutorial 06 makes this precise).

# %%
with torch.no_grad():
    q100 = guide.dist(test[:100])
    means, sds = q100.mean.cpu(), q100.stddev.cpu()
labels = data.labels("test")[:100]
fig, ax = plt.subplots(figsize=(6, 5.5))
for m, s, y in zip(means, sds, labels):
    color = plt.cm.tab10(int(y))
    ax.add_patch(Ellipse(m.tolist(), 2 * s[0].item(), 2 * s[1].item(), color=color, alpha=0.25))
    ax.text(m[0].item(), m[1].item(), str(int(y)), color=color, ha="center", va="center", fontsize=8, weight="bold")
lim = max(3.0, means.abs().max().item() + 0.5)
ax.set(xlim=(-lim, lim), ylim=(-lim, lim), xlabel="z1", ylabel="z2", aspect="equal",
       title="q(z|x) of 100 test digits: mean (label) and 1-sd ellipse")
lesson.save(fig, "latent_scatter.png")

# %% [markdown]
# **The decoded latent grid** (Kingma & Welling 2014, figure 4): z runs over a 15 x 15 grid of
# the prior's quantiles (from 5% to 95% on each axis) and each cell shows the decoded mean.
# Moving across the plane morphs one digit into another continuously: the decoder is a smooth
# map from the plane onto a 2-D manifold of images.

# %%
lesson.figure(plots.manifold(model, data.obs_shape, OUT / "manifold.png", n=15))

# %% [markdown]
# ## Bernoulli or Gaussian pixels?
#
# The likelihood p(x|z) is a modelling choice. A **Bernoulli** likelihood treats each pixel as a
# coin flip with the decoded probability: it needs binary data (hence the binarization) and gives a
# probability mass, so the ELBO is a true lower bound on log P(x) <= 0. A **Gaussian** likelihood
# models the grey levels directly, with a decoded mean and scale per pixel: a density. A density
# over continuous values can exceed 1, and on data whose pixels sit exactly on a few values (the
# background is exactly 0), the decoder can shrink the scale of those pixels to make the density
# there as large as it likes. The suite puts a floor under the scale (`min_scale`, 0.01) so the
# bound stays finite — and the Gaussian ELBO comes out *positive*, often hugely so.
#
# The two numbers live on different spaces (mass of binary images vs density of grey-level
# images) and **must not be compared**. A fair comparison would dequantize the grey levels (add
# uniform noise within each level) and count the bin width, as density-model papers do.

# %%
gaussian_config = dataclasses.replace(bernoulli_config, likelihood="gaussian", binarize="none",
                                     out=lesson.fresh("gaussian"))
gaussian_dir = pyro_vae.fit(gaussian_config, progress=False if lesson.quick else None)
gaussian = pyro_vae.load_run(gaussian_dir, DEVICE)
grey = pyro_vae.load_data(DATASET, DATA_DIR, likelihood="gaussian", binarize="none")
grey_test = grey.observations("test", DEVICE)
pyro.set_rng_seed(0)
g_result = evaluate(gaussian.pair.model, gaussian.pair.guide, grey_test[:n_eval], iw_samples=k_eval)
with torch.no_grad():
    z = gaussian.pair.guide.dist(grey_test[:n_eval]).sample()
    scale = gaussian.pair.model.likelihood(gaussian.pair.model.decoder(z)).base_dist.scale
at_floor = (scale < gaussian.config.min_scale * 1.5).float().mean().item()
print(f"{'likelihood':10s} {'ELBO':>9s} {'recon':>9s} {'KL':>7s} {'NLL (K=' + str(k_eval) + ')':>14s}")
for name, r in (("bernoulli", result), ("gaussian", g_result)):
    print(f"{name:10s} {r['elbo']:9.2f} {r['recon']:9.2f} {r['kl']:7.2f} {r['nll']:9.2f} ± {r['nll_se']:.2f}")
print(f"gaussian: {100 * at_floor:.0f}% of decoded pixel scales are within 1.5x of the floor "
      f"{gaussian.config.min_scale}")

# %% [markdown]
# The Gaussian model's "log-likelihood" is large and positive because most of its pixels have a
# decoded scale at the floor: the density of a background pixel at exactly 0 is then
# N(0; 0, 0.01^2) = e^3.7 per pixel. Its reconstructions below (third row, decoded means) are grey
# and smooth rather than sharp — the mean of a Gaussian, not the probability of a coin.
# Rows: grey-level test images, Bernoulli reconstructions (pixel probabilities), Gaussian
# reconstructions (pixel means).

# %%
with torch.no_grad():
    rows = torch.cat([grey_test[:16],
                      model.decode_mean(guide.dist(test[:16]).sample()),
                      gaussian.pair.model.decode_mean(gaussian.pair.guide.dist(grey_test[:16]).sample())])
lesson.figure(plots.image_grid(rows, data.obs_shape, OUT / "likelihoods.png", nrow=16,
                               title="data | Bernoulli | Gaussian reconstructions"))

# %% [markdown]
# ## What next
#
# * Tutorial 02 keeps this model and swaps the guide for richer posteriors with one word.
# * Tutorial 04 replaces the ELBO with the importance-weighted bound.
# * Tutorial 06 looks at the cloud of all q(z|x) together: the aggregate posterior.

# %%
lesson.finish()
