# %% [markdown]
# # 12 — The prior hole: why VAE samples are poor when reconstructions are good
#
# A VAE can reconstruct its test images well and still draw blurry, ambiguous digits when it
# samples. Asperti's question (Asperti 2019, "About generative aspects of Variational
# Autoencoders", arXiv:1909.10379, the paper of tutorial 06's variance law; Asperti & Trentin
# 2020, "Balancing reconstruction error and Kullback-Leibler divergence in Variational
# Autoencoders", arXiv:2002.07514) has a standard answer, which this lesson puts to the test:
# the decoder is trained on codes from the **aggregate posterior**
#
#     q(z) = (1/N) sum_n q(z|x_n),
#
# one Gaussian per training image, and sampled at codes from the **prior** p(z). Where p(z) has
# mass and q(z) has none — a **prior hole** (Rosca, Lakshminarayanan & Mohamed 2018,
# "Distribution Matching in Variational Inference", arXiv:1802.06847) — the decoder was never
# asked what to draw.
#
# 1. A VAE with a 2-D latent, so that p(z), q(z) and the hole can be drawn, and what the decoder
#    draws inside and outside the hole.
# 2. **ELBO surgery** (Hoffman & Johnson 2016, "ELBO surgery: yet another way to carve up the
#    variational evidence lower bound"): the KL term of the ELBO is the mutual information
#    I_q(x; z) plus the marginal KL(q(z) || p(z)), and the second is the mismatch itself.
# 3. Five remedies at the same budget: three priors learned with the model (VampPrior, mixture of
#    Gaussians, RealNVP), a Gaussian mixture fitted to the codes afterwards (ex-post density
#    estimation) and a two-stage VAE; each with its codes over its prior, its samples, and a table
#    of NLL, FID, precision, recall, mutual information, marginal KL and prior hole.
# 4. What the numbers show, and what they do not.
#
# Run: `python tutorials/12_the_prior_hole.py [--quick] [--out DIR]`. `--quick` trains five small
# models (60 epochs each) on the bundled 8x8 digits: about a minute on a CPU. The full run trains
# them on MNIST when found (`$PYRO_VAE_DATA`, else `../shared/data` beside the repository), 50
# epochs each: with one epoch per model it took 14 minutes on a busy 2-core CPU, so expect a few
# hours there at 50 epochs (20 to 60 s per MNIST epoch and model, the nested two-stage NLL, the
# surgeries over 50,000 training images), and far less on a GPU.

# %%
import dataclasses
import json
import math
import time

import torch

import pyro_vae
from pyro_vae import RunConfig, contract, encode, features, plots, quality, refit, two_stage
from pyro_vae.cli_quality import assess_run
from pyro_vae.data import SPLITS
from pyro_vae.evaluate import evaluate, per_datapoint
from pyro_vae.tutorial import Lesson

import matplotlib.pyplot as plt  # noqa: E402  (after pyro_vae.plots, which selects a file backend)
from matplotlib.colors import ListedColormap  # noqa: E402

lesson = Lesson("12", "the prior hole")
OUT = lesson.out
DEVICE = lesson.device
DATASET, DATA_DIR = lesson.dataset()
QUICK = lesson.quick

data = pyro_vae.load_data(DATASET, DATA_DIR)
x_train = data.observations("train", DEVICE)
test, test_y = data.observations("test", DEVICE), data.labels("test", DEVICE)
N = x_train.shape[0]
n_eval = len(test) if QUICK or DEVICE == "cuda" else 2000  # the NLL is the costly part
K_EVAL = 200 if QUICK else 1000
SAMPLES = len(test) if QUICK else 10000  # model samples against as many test images (FID, precision, recall)
CODES = N if QUICK else 2000  # training codes of the surgeries; q(z) is always the mixture over all N images
CODE_ROWS = torch.randperm(N, generator=torch.Generator().manual_seed(0))[:CODES].to(DEVICE)

base = RunConfig(dataset=DATASET, data_dir=str(DATA_DIR), latent_dim=2,
                 hidden=[64, 64] if QUICK else [256, 256], epochs=60 if QUICK else 50,
                 batch_size=64 if QUICK else 128, lr=3e-3 if QUICK else 1e-3, objective="elbo",
                 seed=0, device=DEVICE)
base = dataclasses.replace(base, patience=base.epochs)  # every run gets its whole budget


def train(name: str, config: RunConfig) -> str:
    t0 = time.perf_counter()
    run_dir = pyro_vae.fit(dataclasses.replace(config, out=lesson.fresh(name)), progress=False if QUICK else None)
    print(f"{name:10s} trained in {time.perf_counter() - t0:4.0f} s")
    return str(run_dir)


# %% [markdown]
# ## 1. Codes, prior and aggregate posterior in two dimensions
#
# A plain VAE: N(0, I) prior, diagonal Gaussian guide, 2-D latent. Every run of this lesson names
# the Monte-Carlo `objective="elbo"`: the learned priors of section 3 have no closed-form KL, and
# the comparison should not mix the prior with the estimator (as in tutorial 08).
#
# q(z) is a mixture of N Gaussians and can be evaluated exactly at any z:
# `quality.aggregate_log_sum(guide, x_train, {"z": z})` is the logsumexp over the training images
# of log q(z|x_n) (by matrix products for a diagonal Gaussian guide, through
# `contract.guide_log_prob` for any other), and subtracting log N gives log q(z). On a grid it can
# be drawn beside p(z).
#
# **The hole**, in the quality module's definition: the share of prior draws z ~ p(z) at which
# q(z) is lower than at 99% of the training codes z_n ~ q(z|x_n), i.e. below the 1st percentile of
# log q over the codes the decoder was trained on. The right panel marks that region inside the
# prior's 99% highest-density region: where the prior sends samples and no image is encoded.
# Note the floor: a prior equal to q(z) would still put 1% of its draws below q's own 1st
# percentile, so 1% is a perfect score, not 0.

# %%
runs = {"standard": train("standard", base)}
standard = pyro_vae.load_run(runs["standard"], DEVICE)
model, guide = standard.pair.model.eval(), standard.pair.guide.eval()


@torch.no_grad()
def log_q_of(guide, z: torch.Tensor, batch: int = 4096) -> torch.Tensor:
    """log q(z) of a guide's aggregate posterior over all N training images, (S,) float64."""
    return torch.cat([quality.aggregate_log_sum(guide, x_train, {"z": z[i:i + batch]})
                      for i in range(0, z.shape[0], batch)]) - math.log(N)


def grid_for(*points: torch.Tensor, n: int = 121):
    """A square grid covering the given 2-D point sets (their 99.5% extent): (axis, points, cell area)."""
    lim = max(float(p.abs().quantile(0.995)) for p in points) * 1.2 + 0.3
    g = torch.linspace(-lim, lim, n, device=DEVICE)
    zz = torch.stack(torch.meshgrid(g, g, indexing="xy"), -1).reshape(-1, 2)
    return g.cpu(), zz, float((g[1] - g[0]) ** 2)


def high_density(log_p: torch.Tensor, area: float, mass: float = 0.99) -> torch.Tensor:
    """The grid cells of the highest-density region holding ``mass`` of the density's grid mass."""
    p = log_p.double().exp() * area
    ordered = p.sort(descending=True).values
    level = ordered[min(int((ordered.cumsum(0) < mass * ordered.sum()).sum()), len(ordered) - 1)]
    return p >= level


def draw_density(ax, g, log_p, title):
    ax.contourf(g, g, log_p.exp().reshape(len(g), len(g)).cpu(), levels=20, cmap="Greys")
    ax.set(title=title, xlabel="z1", ylabel="z2", aspect="equal")


def draw_hole(ax, g, hole):
    ax.contourf(g, g, hole.reshape(len(g), len(g)).cpu().double(), levels=[0.5, 1.5],
                cmap=ListedColormap(["tab:red"]), alpha=0.45)


torch.manual_seed(0)
with torch.no_grad():
    codes_test = plots.posterior_mean(guide, test).cpu()
    prior_draws = model.prior().sample((4000,))
g, zz, area = grid_for(codes_test, prior_draws.cpu())
n_g = len(g)
with torch.no_grad():
    log_p_grid = model.prior().log_prob(zz)
log_q_grid = log_q_of(guide, zz)

# the threshold: the 1st percentile of log q(z_n) over one code z_n ~ q(z|x_n) per training image
# (CODES of them, as the quality module draws them; all N on --quick)
torch.manual_seed(0)
train_codes = quality.code_terms(model, guide, x_train[CODE_ROWS])[0]["z"]
log_q_codes = log_q_of(guide, train_codes)
threshold = torch.quantile(log_q_codes, quality.HOLE_PERCENTILE).item()
hole_grid = high_density(log_p_grid, area) & (log_q_grid < threshold)
log_q_draws = log_q_of(guide, prior_draws)
in_hole = log_q_draws < threshold
grid_mass = float((log_p_grid.double().exp() * area)[log_q_grid < threshold].sum())
print(f"log q(z) threshold (1st percentile of {CODES} training codes): {threshold:.2f}")
print(f"prior draws in the hole: {in_hole.double().mean().item():.1%} of {len(in_hole)} "
      f"(the prior's mass on the grid where q(z) is below the threshold: {grid_mass:.1%})")

fig, axes = plt.subplots(1, 3, figsize=(15, 5))
draw_density(axes[0], g, log_p_grid, "test codes E_q[z|x] over p(z) = N(0, I)")
points = axes[0].scatter(codes_test[:, 0], codes_test[:, 1], c=test_y.cpu(), cmap="tab10", s=5)
fig.colorbar(points, ax=axes[0], ticks=range(10), fraction=0.046, label="digit")
filled = axes[1].contourf(g, g, log_q_grid.clamp_min(threshold - 6).reshape(n_g, n_g).cpu(), levels=20,
                          cmap="viridis")
axes[1].contour(g, g, log_q_grid.reshape(n_g, n_g).cpu(), levels=[threshold], colors="red", linewidths=1.5)
axes[1].contour(g, g, log_p_grid.exp().reshape(n_g, n_g).cpu(), levels=6, colors="white", linewidths=0.6)
fig.colorbar(filled, ax=axes[1], fraction=0.046, label="log q(z)")
axes[1].set(title="aggregate posterior log q(z); red: the threshold,\nwhite: contours of p(z)",
            xlabel="z1", ylabel="z2", aspect="equal")
draw_density(axes[2], g, log_p_grid, f"the hole (red): p(z) high, q(z) below the threshold;\n"
                                     f"{in_hole.double().mean().item():.1%} of prior draws land there")
draw_hole(axes[2], g, hole_grid)
few, few_in = prior_draws[:500].cpu(), in_hole[:500].cpu()
axes[2].scatter(few[~few_in, 0], few[~few_in, 1], s=3, c="black", label="z ~ p(z)")
axes[2].scatter(few[few_in, 0], few[few_in, 1], s=16, c="red", marker="x", label="z ~ p(z), in the hole")
axes[2].legend(loc="lower right", fontsize=8)
fig.tight_layout()
lesson.save(fig, "prior_hole.png", tight=False)

# %% [markdown]
# The test codes (left) cluster by digit, inside the prior's round blob: the variance law of
# tutorial 06 keeps their spread at the prior's. The aggregate posterior (middle) is that mixture
# of Gaussians — high where many images are encoded, lower between the clusters. Its threshold
# level (red) is far out: one training code in a hundred lies beyond it. So the hole as defined
# (right) is mostly a rim at the prior's edge and the widest gaps between the clusters.
#
# What does the decoder draw there? The figure below decodes (the mean of p(x|z)) prior draws
# outside the hole and inside it, beside test images and their reconstructions, and scores each
# set with the suite's digit classifier (`pyro_vae.features`, the net the FIDs below use): its
# mean top-class probability, a rough "does this look like one digit" measure.

# %%
feature_net, feature_info = features.load(features.for_dataset(DATASET), DEVICE)


@torch.no_grad()
def confidence(images: torch.Tensor) -> float:
    """The feature net's mean top-class probability over ``images``."""
    x = images.reshape((-1,) + tuple(data.obs_shape))
    return feature_net(x).softmax(-1).max(-1).values.mean().item()


torch.manual_seed(0)
with torch.no_grad():
    outside = prior_draws[~in_hole][:500]
    pictures = {"test images (as scored)": test[:500],
                "their reconstructions": model.reconstruct(guide, test[:500]),
                "prior draws outside the hole": model.decode_mean(outside),
                f"prior draws in the hole ({int(in_hole.sum())})": model.decode_mean(prior_draws[in_hole])}
fig, axes = plt.subplots(1, 4, figsize=(15, 3.6))
for ax, (title, images) in zip(axes, pictures.items()):
    plots.show_grid(ax, plots.grid_of(images[:32], data.obs_shape, nrow=8), data.obs_shape)
    ax.set_title(f"{title}\nclassifier confidence {confidence(images):.2f}", fontsize=10)
    ax.axis("off")
    print(f"{title:34s} classifier confidence {confidence(images):.3f}")
lesson.save(fig, "hole_samples.png")

# %% [markdown]
# Read this figure before the theory; on `--quick`'s 8x8 digits it contradicts the simple
# story. Where the codes are crowded — the middle of the blob — the decoder draws averages:
# ambiguous images are encoded there with broad q(z|x), their reconstructions are blurred too,
# and so are the prior draws nearby. The hole at the rim, beyond the clusters, decodes to
# exaggerated versions of the nearest cluster's digit, *crisper* than the typical sample (the
# classifier is surer of them). With a 2-D latent on these digits, then, poor samples come less
# from the hole than from how little the code says about each image — the balance between
# reconstruction and KL that Asperti and Trentin study — and the samples are about as good as the
# reconstructions. (The test images score lowest because they are binarized, as the model scores
# them, while the classifier was trained on grey levels.) The full run prints the same four
# numbers for MNIST; where the hole's draws score below the others, the simple story holds
# there. The surgery below puts both effects in nats.
#
# ## 2. ELBO surgery: the KL term carved in two
#
# Averaged over the training images, the ELBO's KL term splits exactly (Hoffman & Johnson 2016):
#
#     E_x KL(q(z|x) || p(z)) = I_q(x; z) + KL(q(z) || p(z)),
#
# with x uniform over the N training images and I_q the mutual information between the image's
# index n and its code under q(n, z) = q(z|x_n) / N. The first term is what the code says about
# the image, and a good autoencoder wants it large; it can never exceed H(n) = log N, the entropy
# of a uniform index. The second term, the **marginal KL**, is the only part of the KL that
# involves the prior, and the only one a better prior can remove: it is zero exactly when
# p(z) = q(z).
#
# `quality.surgery(model, guide, x_train, codes=..., mixture=None)` estimates both from one code
# per drawn training image, q(z) summed over all N images (exact). Each term is the mean over the
# codes of a per-code quantity — log q(z_s|x_s) - log q(z_s) and log q(z_s) - log p(z_s) — so
# each has the standard error of a mean.

# %%
torch.manual_seed(0)
cut = quality.surgery(model, guide, x_train, codes=CODES, generator=torch.Generator().manual_seed(0))
print(f"ELBO surgery of the standard-prior VAE on {N} training images ({cut['codes']} codes, exact q(z)):")
print(f"  KL term        {cut['kl']:7.3f} ± {cut['kl_se']:.3f} nats")
print(f"  = I_q(x; z)    {cut['mutual_information']:7.3f} ± {cut['mutual_information_se']:.3f}   "
      f"(at most log N = {math.log(N):.3f})")
print(f"  + KL(q(z)||p)  {cut['marginal_kl']:7.3f} ± {cut['marginal_kl_se']:.3f}")
torch.manual_seed(0)
train_bounds = evaluate(model, guide, x_train, iw_samples=1)
print(f"  (the ELBO's own KL term over all training images: {train_bounds['kl']:.3f}; "
      f"reconstruction term {train_bounds['recon']:.3f})")

# %% [markdown]
# The mutual information takes almost all of the KL term, and it is far below log N: two
# dimensions cannot tell every training image apart, and the codes of similar images overlap.
# The marginal KL is small — the first two moments of q(z) already match the prior's (the variance
# law of tutorial 06) — but it is not zero: that is the prior hole, in nats, what the ELBO pays
# because p(z) is not q(z). A prior that learns q(z)'s shape can remove it without touching the
# mutual information, and so without losing reconstructions. It cannot do more: to sample better
# *inside* the clusters the code must carry more information, and that is the other term.
#
# ## 3. The remedies, at the same budget
#
# Five ways to make the distribution sampled from look like q(z), each with the network, the
# epochs and the seed of the standard run:
#
# * **VampPrior** (`prior="vamp"`; Tomczak & Welling 2018, arXiv:1705.07120): p(z) is the guide's
#   own q(z|u_k) mixed over K learned pseudo-inputs u_k — an aggregate posterior over K learned
#   images instead of N real ones.
# * **mixture of Gaussians** (`prior="mog"`, 10 diagonal components; Dilokthanakul et al. 2016,
#   arXiv:1611.02648).
# * **RealNVP prior** (`prior="realnvp"`, N(0, I) through four affine couplings; Xu et al. 2019,
#   arXiv:1905.13452).
# * **refit-gmm**, ex-post density estimation (Ghosh et al. 2019, arXiv:1903.12436):
#   `refit.refit(run, "gmm", out, components=10)` fits a full-covariance Gaussian mixture to one
#   code per training image of the *standard* run after training, and writes a new run with it as
#   the prior. Decoder and guide are untouched, so q(z) and the mutual information are the
#   standard run's; only the prior moves.
# * **two-stage VAE** (Dai & Wipf 2019, "Diagnosing and Enhancing VAE Models", arXiv:1903.05789):
#   a second VAE, u -> z, trained on the standard run's codes (each training row a fresh draw of
#   q(z|x): `encode(..., "posterior")`), with a Gaussian likelihood. Dai & Wipf sample it with
#   u ~ N(0, I), z = the *mean* of p(z|u), x ~ p(x|z) of the first stage; the suite's `sample`
#   and `quality` draw z ~ p(z|u) instead, the model its NLL scores. Both samplers are measured
#   below.
#
# The learned priors change training (the codes move with the prior); the last two do not, and
# cost only a fit after the fact.

# %%
vamp_k = 50 if QUICK else 500  # pseudo-inputs; 500 would be a third of the 1,258 digits
runs["vamp"] = train("vamp", dataclasses.replace(base, prior="vamp", prior_options={"pseudo_inputs": vamp_k}))
runs["mog"] = train("mog", dataclasses.replace(base, prior="mog", prior_options={"components": 10}))
runs["realnvp"] = train("realnvp", dataclasses.replace(base, prior="realnvp"))

t0 = time.perf_counter()
runs["refit-gmm"] = lesson.fresh("refit-gmm")
record = refit.refit(runs["standard"], "gmm", runs["refit-gmm"], components=10, device=DEVICE)
fit = record["log_density_per_code"]
standard_fit = torch.distributions.Normal(0.0, 1.0).log_prob(train_codes.cpu()).sum(-1).mean().item()
print(f"refit-gmm  fitted in {time.perf_counter() - t0:4.0f} s: log density per training code {fit['train']:.3f} "
      f"(validation codes {fit['valid']:.3f}; N(0, I) on the training codes {standard_fit:.3f})")

codes_file = OUT / "runs" / "standard-codes.npz"
arrays = encode.encode(standard.pair, data, standard.config, SPLITS, "posterior", DEVICE)
arrays.update(two_stage.source_arrays(runs["standard"]))
encode.write(codes_file, arrays)
runs["two-stage"] = train("two-stage", dataclasses.replace(base, dataset=str(codes_file), likelihood="gaussian",
                                                            binarize="none"))
models = {name: pyro_vae.load_run(run_dir, DEVICE) for name, run_dir in runs.items()}
for run in models.values():
    run.pair.eval()
second = models["two-stage"].pair

# %% [markdown]
# **The two-stage model's bounds.** Its prior over the first stage's z is
# p2(z) = integral of p(z|u) N(u; 0, I) du, and log p(x) = log integral of p(x|z) p2(z) dz. With
# the first stage's q(z|x) as proposal and an unbiased importance-sampled estimate p2_hat(z) inside
# (the second stage's guide q(u|z), K2 = 32 samples), p_hat(x) = mean_k p(x|z_k) p2_hat(z_k) /
# q(z_k|x) is unbiased for p(x), so its log is a stochastic lower bound like every other NLL here.
# `evaluate` scores the pair as it is once the model side has `log_terms(x, z)` (its single-site
# fast path): `TwoStagePrior` plugs the estimate in as log p(z).

# %%
K2 = 32


class TwoStagePrior:
    """The first stage's likelihood under the second stage's marginal p2(z), for ``evaluate``."""

    def __init__(self, first, second, samples: int = K2):
        self.first, self.second, self.samples = first, second, samples
        self.likelihood = first.likelihood  # read by evaluate to size its chunks

    @torch.no_grad()
    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        flat = z.reshape(-1, z.shape[-1])
        out = torch.cat([per_datapoint(self.second.model, self.second.guide, flat[i:i + 20000], self.samples)["log_px"]
                         for i in range(0, flat.shape[0], 20000)])
        return out.reshape(z.shape[:-1])

    def log_terms(self, x, z, y=None):
        return self.log_prior(z), self.first.log_terms(x, z, y)[1]


two_stage_prior = TwoStagePrior(model, second)
SAMPLERS = ["standard", "vamp", "mog", "realnvp", "refit-gmm", "two-stage", "two-stage, z~p(z|u)"]


def run_of(name: str) -> str:
    return "two-stage" if name.startswith("two-stage") else name


def pair_of(name: str):
    """(model, guide) in the first stage's z: the refit and two-stage runs decode and encode with
    the standard run's networks."""
    if name.startswith("two-stage"):
        return model, guide
    return models[name].pair.model, models[name].pair.guide


@torch.no_grad()
def sampler_codes(name: str, n: int) -> torch.Tensor:
    """The z a sampler decodes: a prior draw; for the two-stage model the mean of p(z|u) at
    u ~ N(0, I) (Dai & Wipf's sampler), or a draw of p(z|u) (as `pyro-vae sample` and `quality`
    decode it)."""
    if name == "two-stage":
        return second.model.decode_mean(second.model.prior().sample((n,)))
    if name.startswith("two-stage"):
        return contract.observation(second.model, torch.zeros(n, 2, device=DEVICE)).sample()
    return models[name].pair.model.prior().sample((n,))


def prior_log_density(name: str, z: torch.Tensor) -> torch.Tensor:
    if name.startswith("two-stage"):
        return two_stage_prior.log_prior(z)
    with torch.no_grad():
        return models[name].pair.model.prior().log_prob(z)


# %% [markdown]
# **Measures.** For every run, on the same images: the test NLL (importance-sampled, K samples,
# ± its standard error over images); FID, precision and recall of `SAMPLES` model samples (draws
# of p(x|z)) against as many test images, in the feature space of the suite's small digit
# classifier; and the surgery and the hole on the training images, each run against its own q(z).
# All but the NLL come from `cli_quality.assess_run(run_dir, ...)`, the function behind
# `pyro-vae quality RUN`.
#
# For the two-stage run `assess_run` measures the surgery and the hole of the *second* stage, in
# its own latent u (printed for reference); the numbers in z comparable with the other rows are
# computed here from the quality module's parts: the first stage's q(z) at its codes, log p2(z)
# by importance sampling, and the hole of the z the sampler decodes (`quality.prior_hole(...,
# values={"z": ...})` fixes the model's z to them). The sampler that draws z ~ p(z|u) gets its FID
# from `quality.feature_metrics` on its own samples.

# %%
def z_space_surgery(name: str) -> dict:
    """Surgery and hole of a sampler against the first stage's q(z), log p(z) by ``prior_log_density``."""
    torch.manual_seed(0)
    rows = CODE_ROWS
    values, log_q_self, _ = quality.code_terms(model, guide, x_train[rows])
    log_q = log_q_of(guide, values["z"])
    mi, marginal = log_q_self.double() - log_q, log_q - prior_log_density(name, values["z"]).double()
    out = {}
    for key, v in (("mutual_information", mi), ("marginal_kl", marginal), ("kl", mi + marginal)):
        out[key], out[key + "_se"] = v.mean().item(), v.std().item() / math.sqrt(v.numel())
    hole = quality.prior_hole(model, guide, x_train, None, log_q, torch.arange(N, device=DEVICE), len(rows),
                              values={"z": sampler_codes(name, len(rows))})
    out["prior_hole"], out["prior_hole_se"] = hole["fraction"], hole["se"]
    return out


def extract(images):
    return features.extract(feature_net, images.reshape((-1,) + tuple(data.obs_shape)))


KEYS = ("fid", "precision", "recall", "mutual_information", "mutual_information_se", "marginal_kl",
        "marginal_kl_se", "prior_hole", "prior_hole_se")
table, nll = {}, {}
for name in SAMPLERS:
    t0 = time.perf_counter()
    if run_of(name) not in nll:
        torch.manual_seed(0)
        scored = (two_stage_prior, guide) if name == "two-stage" else pair_of(name)
        nll[run_of(name)] = evaluate(*scored, test[:n_eval], iw_samples=K_EVAL)
    if name == "two-stage, z~p(z|u)":
        torch.manual_seed(0)
        first = two_stage.first_stage(models["two-stage"].config, DEVICE)
        fake = torch.cat([two_stage.decode(*first, sampler_codes(name, 500)) for _ in range(0, SAMPLES, 500)])[:SAMPLES]
        measured = {**quality.feature_metrics(extract(test[:SAMPLES]), extract(fake)), **z_space_surgery(name)}
    else:
        measured = assess_run(runs[name], samples=SAMPLES, codes=CODES, device=DEVICE, data_dir=str(DATA_DIR))
        if name == "two-stage":
            print(f"two-stage, the second stage in its own u: I(z; u) {measured['mutual_information']:.3f}, "
                  f"KL(q(u)||N(0, I)) {measured['marginal_kl']:.3f}, prior hole {measured['prior_hole']:.1%}")
            measured.update(z_space_surgery(name))
    bounds = nll[run_of(name)]
    table[name] = {"nll": bounds["nll"], "nll_se": bounds["nll_se"], "elbo": bounds["elbo"],
                   **{k: measured[k] for k in KEYS}}
    print(f"{name:20s} measured in {time.perf_counter() - t0:4.0f} s")

# the FID's own scale: the standard run with other sampling seeds, and training images as "samples"
fid_seeds = []
for seed in (1, 2, 3):
    torch.manual_seed(seed)
    fid_seeds.append(quality.feature_metrics(extract(test[:SAMPLES]),
                                             extract(quality.sample_images(model, test, SAMPLES)))["fid"])
floor = quality.feature_metrics(extract(test[:SAMPLES]), extract(x_train[:SAMPLES]))
print(f"FID of the standard run with sampling seeds 1-3: {', '.join(f'{f:.2f}' for f in fid_seeds)}; "
      f"{min(SAMPLES, N)} training images against the test images: FID {floor['fid']:.2f}, precision "
      f"{floor['precision']:.3f}, recall {floor['recall']:.3f} (a perfect sampler, at this sample size)")

check = z_space_surgery("standard")
print(f"check, the z-space routine on the standard run: I(x;z) {check['mutual_information']:.3f}, marginal KL "
      f"{check['marginal_kl']:.3f}, hole {check['prior_hole']:.1%} (assess_run, other draws: "
      f"{table['standard']['mutual_information']:.3f}, {table['standard']['marginal_kl']:.3f}, "
      f"{table['standard']['prior_hole']:.1%})")

print(f"\n{DATASET}: NLL on {n_eval} test images, K={K_EVAL} (two-stage: K={K_EVAL} x K2={K2}); FID, precision "
      f"and recall of {SAMPLES} samples against {min(SAMPLES, len(test))} test images ({feature_info['name']} "
      f"features, not Inception); surgery on {CODES} training codes; nats")
print(f"{'sampler':20s} {'NLL':>14s} {'FID':>6s} {'prec.':>6s} {'recall':>6s} {'I(x;z)':>13s} "
      f"{'KL(q(z)||p)':>13s} {'prior hole':>13s}")
for name, r in table.items():
    print(f"{name:20s} {r['nll']:6.2f} ± {r['nll_se']:4.2f} {r['fid']:6.2f} {r['precision']:6.3f} {r['recall']:6.3f} "
          f"{r['mutual_information']:6.2f} ± {r['mutual_information_se']:4.2f} "
          f"{r['marginal_kl']:6.3f} ± {r['marginal_kl_se']:4.3f} "
          f"{100 * r['prior_hole']:5.1f} ± {100 * r['prior_hole_se']:3.1f} %")
print(f"log N = {math.log(N):.2f}, the ceiling of I(x; z); a prior hole of 1% is the floor (p = q)")

# %% [markdown]
# Each run's test codes over its own prior (refit and two-stage share the standard run's encoder,
# so their codes are the standard run's; the two-stage panel shows p2(z)), with that run's hole in
# red: where its prior is high and its q(z) below the 1st percentile of its training codes. Then
# one number per percentile instead of one at 1%: the share of each sampler's z with q(z) below
# the alpha-quantile of log q at the training codes, against alpha. A sampler that draws from q(z)
# itself lies on the diagonal; above it, the sampler visits places where q(z) is thin more often
# than the codes do — the whole hole, not just its rim.

# %%
fig, axes = plt.subplots(2, 3, figsize=(15, 10))
curves = {}
alphas = torch.linspace(0.005, 0.5, 60, dtype=torch.float64)
for name in SAMPLERS:
    run_model, run_guide = pair_of(name)
    torch.manual_seed(0)
    own_codes = log_q_of(run_guide, quality.code_terms(run_model, run_guide, x_train[CODE_ROWS])[0]["z"])
    draws = sampler_codes(name, 4000)
    at_draws = log_q_of(run_guide, draws)
    levels = torch.quantile(own_codes, alphas.to(own_codes.device))
    curves[name] = (at_draws[None, :] < levels[:, None]).double().mean(1).cpu()
    if name == "two-stage, z~p(z|u)":
        continue  # the same prior p2(z) as the panel before
    ax = axes.flat[SAMPLERS.index(name)]
    with torch.no_grad():
        codes = plots.posterior_mean(run_guide, test).cpu()
    g_m, zz_m, area_m = grid_for(codes, draws.cpu(), n=81 if name.startswith("two-stage") else 121)
    log_p_m = prior_log_density(name, zz_m)
    hole_m = high_density(log_p_m, area_m) & (log_q_of(run_guide, zz_m) < torch.quantile(own_codes, 0.01))
    holes = f"hole {table[name]['prior_hole']:.1%}"
    if name == "two-stage":
        holes += f" (mean z), {table['two-stage, z~p(z|u)']['prior_hole']:.1%} (z ~ p(z|u))"
    draw_density(ax, g_m, log_p_m, f"{name}: NLL {table[name]['nll']:.2f}, FID {table[name]['fid']:.2f}\n{holes}")
    draw_hole(ax, g_m, hole_m)
    ax.scatter(codes[:, 0], codes[:, 1], c=test_y.cpu(), cmap="tab10", s=4)
fig.tight_layout()
lesson.save(fig, "remedies_codes.png", tight=False)

fig, ax = plt.subplots(figsize=(6.5, 5))
ax.plot([0, 0.5], [0, 0.5], color="grey", lw=1, ls="--", label="sampling q(z) itself")
for name, curve in curves.items():  # a share of 0 is drawn at the bottom edge
    ax.plot(alphas, curve.clamp_min(1.5e-3), lw=1.5, label=name, ls=":" if name == "two-stage" else "-")
ax.set_ylim(1e-3, 0.7)
ax.axvline(quality.HOLE_PERCENTILE, color="black", lw=0.6)
ax.set(xscale="log", yscale="log", xlabel="alpha: quantile of log q(z) at the training codes",
       ylabel="share of the sampler's z with q(z) below it", title="how often each sampler visits thin q(z)\n"
       "(at alpha = 0.01: the prior hole of the table)")
ax.legend(fontsize=8)
ax.grid(alpha=0.3, which="both")
lesson.save(fig, "hole_curves.png")

# %%
torch.manual_seed(1)
grids = {"test images": test[:64]}
with torch.no_grad():  # mean images of p(x|z); the FIDs score its draws
    for name in SAMPLERS:
        grids[name] = pair_of(name)[0].decode_mean(sampler_codes(name, 64))
fig, axes = plt.subplots(2, 4, figsize=(12, 6.6))
for ax, (name, images) in zip(axes.flat, grids.items()):
    plots.show_grid(ax, plots.grid_of(images, data.obs_shape, nrow=8), data.obs_shape)
    ax.set_title(name if name == "test images" else f"{name}\nFID {table[name]['fid']:.2f}", fontsize=9)
    ax.axis("off")
lesson.save(fig, "remedies_samples.png")

# %% [markdown]
# Read the table by columns. The **mutual information** moves little between runs (for
# refit-gmm and two-stage it is the standard run's: the same guide), so the remedies mostly keep
# what the codes say about each image; where it drops (the VampPrior on `--quick`), the learned
# prior changed the codes themselves, not only where samples go. The **marginal KL** is where the
# priors differ: a prior that follows the clusters of q(z) makes KL(q(z) || p(z)) smaller, and
# the hole and the curves above move towards the diagonal. refit-gmm, a mixture fitted to the
# codes themselves, comes closest on `--quick`, without retraining anything; its NLL differs from
# the standard run's only by the change of prior, since encoder and decoder are the same.
#
# The two-stage rows carry a warning. When the first stage's marginal KL is small, the second
# stage has almost nothing to learn: modelling z with one Gaussian costs little more than using u,
# and its KL term takes the cheaper way — I(z; u) near 0, printed above, is posterior collapse of
# the second stage. Its p(z|u) then barely depends on u, the mean of p(z|u) is nearly one point,
# and the sampler that decodes means (Dai & Wipf's) draws nearly the same code every time: its
# "hole" is empty because every draw sits in the bulk of q(z), and its recall is below that of the
# sampler that draws. Drawing z ~ p(z|u) samples the model that the NLL scores, and behaves like
# the standard prior; it is what the suite's `sample` and `quality` do. Dai & Wipf's argument needs a first stage whose codes are far from a Gaussian (in their
# setting, a latent larger than the data's manifold, where the codes pile up on a lower-
# dimensional set); a 2-D latent with a near-Gaussian q(z) gives the second stage nothing to do.
#
# FID and precision follow the hole and the marginal KL only loosely. The standard run's FID
# with other sampling seeds, printed above the table, is the yardstick: on `--quick` it moves by
# as much as the gaps between most remedies.
# Training images scored as if they were samples give the floor a perfect sampler would reach at
# this sample size. Section 1 showed why the remedies gain so little here: the poor samples are
# mostly where the codes crowd, not in the hole.
#
# ## 4. What the numbers show, and what they do not
#
# * **The marginal KL is the mismatch in nats**, and every remedy that lowers it moves the
#   sampler's z towards where codes are. But in a 2-D latent it is a small part of the KL term;
#   most of the KL is mutual information, and the blurred samples come from codes that say too
#   little (section 1), which no prior can fix. In higher-dimensional latents, with more
#   information per code, q(z) becomes a sparser set of sharper clusters, and the part a prior
#   can fix is expected to grow — the concern of Hoffman & Johnson 2016 and Rosca et al. 2018,
#   which this lesson's 2-D models do not measure.
# * **The prior hole at the 1st percentile has a floor of 1%**, and it reports the rim of the
#   prior more than its gaps; the curves of `hole_curves.png` show the rest.
# * **FIDs here are in the suite's own feature space** (a small CNN trained on these digits): they
#   rank models scored with the same net version and are not comparable with Inception FIDs in
#   papers. On `--quick` they compare a few hundred samples with the few hundred test images of
#   the 8x8 digits; FID is biased upwards at small sample sizes (the training images' FID is not
#   0), and one model's FID moves between sampling seeds by the spread printed above — more, on
#   `--quick`, than most differences in the table. Only one training seed was run.
# * **The surgery's estimator** is exact here, q(z) summed over all N training images. With a
#   subset of M < N images as the mixture (`surgery(..., mixture=M)`, `pyro-vae quality
#   --mixture-images M`) it is biased: the log of an unbiased estimate of q(z) is low on average,
#   so the marginal KL comes out too low — even negative, which no KL can be — and the mutual
#   information too high, by O(1/M). The figure below measures it on the standard run.
# * **The two-stage numbers** are in the first stage's z; its NLL and marginal KL use an
#   importance-sampled log p2(z) (K2 = 32), low on average, which makes both a little pessimistic.
# * **Mutual information is bounded by log N**, and a 2-D latent stays far below it.
# * One seed and one budget: the ranking of the remedies can change with either. The learned
#   priors trade bound against samples (tutorial 08), and a VampPrior's pseudo-inputs need epochs
#   to settle.

# %%
sizes = sorted({m for m in (25, 100, 300, 1000, 10000, N) if m <= N})
bias = {}
for m in sizes:
    torch.manual_seed(0)
    bias[m] = quality.surgery(model, guide, x_train, codes=min(CODES, m), mixture=m,
                              generator=torch.Generator().manual_seed(0))
    print(f"mixture of {m:6d} images: I(x;z) {bias[m]['mutual_information']:.3f} ± "
          f"{bias[m]['mutual_information_se']:.3f}, KL(q(z)||p) {bias[m]['marginal_kl']:.3f} ± "
          f"{bias[m]['marginal_kl_se']:.3f}")
fig, ax = plt.subplots(figsize=(6.5, 4))
for key, label in (("mutual_information", "I(x; z)"), ("marginal_kl", "KL(q(z) || p(z))")):
    ax.errorbar(sizes, [bias[m][key] for m in sizes], yerr=[bias[m][key + "_se"] for m in sizes], marker="o",
                capsize=3, label=label)
ax.axhline(0, color="black", lw=0.6)
ax.set(xscale="log", xlabel="images M in the mixture estimate of q(z)", ylabel="nats",
       title=f"surgery of the standard run: biased for M < N = {N}\n(log N = {math.log(N):.2f})")
ax.legend()
ax.grid(alpha=0.3)
lesson.save(fig, "surgery_bias.png")

# %%
(OUT / "table.json").write_text(json.dumps({"table": table, "surgery": {k: cut[k] for k in quality.SURGERY_KEYS},
                                            "hole_grid_mass": grid_mass, "fid_standard_seeds": fid_seeds,
                                            "fid_training_images": floor, "hole_curves_alpha": alphas.tolist(),
                                            "hole_curves": {k: v.tolist() for k, v in curves.items()}},
                                           indent=2) + "\n")
lesson.finish()
