# %% [markdown]
# # 02 — Swapping the guide: one word, six posteriors
#
# The ELBO is log p(x) minus KL(q(z|x) || p(z|x)): whatever the guide cannot represent of the
# true posterior is paid for in the bound, and — because model and guide train together — in
# the model too, since the decoder is pushed toward posteriors the guide *can* represent. How
# much does a richer q(z|x) buy?
#
# `pyro_vae` builds every guide on the same encoder trunk h(x); the family is one word of the
# run's config. This tutorial trains the same VAE with six guides:
#
# | guide | q(z\|x) | paper |
# | --- | --- | --- |
# | `diag` | N(mu(x), diag sigma(x)^2) | Kingma & Welling 2014, arXiv:1312.6114 |
# | `full` | N(mu(x), L(x) L(x)^T), a full covariance | Kingma & Welling 2014 |
# | `planar` | diagonal base + K planar flows, z' = z + u tanh(w.z + b) | Rezende & Mohamed 2015, arXiv:1505.05770 |
# | `iaf` | diagonal base + K inverse autoregressive flows | Kingma et al. 2016, arXiv:1606.04934 |
# | `coupling` | diagonal base + K affine couplings (RealNVP) | Dinh et al. 2017, arXiv:1605.08803 |
# | `hamiltonian` | diagonal base + K leapfrog steps along grad_z log p(x, z) of the model | Caterini et al. 2018, arXiv:1805.11328 |
#
# With a 2-D latent the model's **exact** posterior p(z|x) = p(x, z) / p(x) can be computed on a
# grid, with p(x) by quadrature, so each guide can be held against the truth.
#
# Run: `python tutorials/02_swapping_guides.py [--quick] [--out DIR]`. `--quick` trains each
# guide briefly on the 8x8 digits; the full run trains on MNIST when it is found
# (`$PYRO_VAE_DATA`, else `../shared/data` beside the repository).

# %%
import dataclasses
import json
import time

import pyro
import torch

import pyro_vae
from pyro_vae import GUIDES, RunConfig, plots
from pyro_vae.exact import grid_posterior
from pyro_vae.evaluate import evaluate
from pyro_vae.tutorial import Lesson

lesson = Lesson("02", "swapping guides")
OUT = lesson.out
DEVICE = lesson.device
DATASET, DATA_DIR = lesson.dataset()

# %% [markdown]
# ## One word changes
#
# The registry `GUIDES` maps each name to its builder, a one-line description and its paper; the
# command line (`pyro-vae guides`), the benchmarks and this tutorial all read it. Every run below
# shares one `RunConfig`; only `guide` differs. Flow guides take `flows` (K, the number of steps)
# and `flow_hidden` (the hypernetwork that computes each step's parameters from h(x)); the
# Hamiltonian guide takes `leapfrog` (its K; 3 under `--quick`, whose every step costs gradients
# of the model, see below).
#
# The objective is named, the Monte-Carlo `elbo`. Left unset, each run would get the suite's
# default for its pair: the analytic-KL `meanfield` for `diag`, whose KL to N(0, I) has a closed
# form, and `elbo` for the full covariance and the flows, which have none — the table below would
# then mix the effect of the guide with that of the gradient estimator.

# %%
NAMES = ["diag", "full", "planar", "iaf", "coupling", "hamiltonian"]
for name in NAMES:
    spec = GUIDES[name]
    print(f"{name:11s} {spec.about}  [{spec.reference}]  options: {spec.options()}")

base = RunConfig(dataset=DATASET, data_dir=str(DATA_DIR), latent_dim=2,
                 hidden=[256, 256] if lesson.quick else [512, 512],
                 guide_options={"flows": 4, "flow_hidden": [64, 64] if lesson.quick else [256, 256],
                                "leapfrog": 3 if lesson.quick else 5},
                 objective="elbo", epochs=10 if lesson.quick else 50, batch_size=64 if lesson.quick else 128,
                 lr=2e-3 if lesson.quick else 1e-3, seed=0, device=DEVICE)
for name in ("full", "iaf"):
    config = dataclasses.replace(base, guide=name)
    changed = {k: v for k, v in config.to_dict().items() if v != base.to_dict()[k]}
    print(f"config for {name!r} differs from the base only in {changed}")

# %% [markdown]
# ## Train every guide the same way
#
# One run per guide: same data, decoder architecture, seed, optimizer and budget. Tutorial 01
# trained with `pyro_vae.fit`, which adds validation, early stopping, checkpoints and figures;
# here the loop is written out with the public pieces it is made of — `build` gives the
# model/guide pair as torch modules, `loss_fn` the differentiable negative ELBO — to show that a
# guide is just another module. (`pyro_vae.compare.compare`, or `pyro-vae compare --guides
# diag,full,planar,iaf,coupling,hamiltonian` on the command line, trains with `fit` and
# evaluates, all in one call.) Guides without flows take no flow options, so each gets only the
# options it knows.
# `data.batches` yields `(x, y)` pairs, images of shape (N, 1, H, W) and their labels; this VAE is
# not conditioned on the label, so y is left out of the loss.

# %%
data = pyro_vae.load_data(DATASET, DATA_DIR)


def train(config):
    pyro.set_rng_seed(config.seed)
    pair = pyro_vae.build(dataclasses.replace(config, likelihood=data.likelihood), data.obs_shape).to(DEVICE)
    loss = pyro_vae.loss_fn(config.objective, pair.model, pair.guide, config.particles)
    optimizer = torch.optim.Adam(pair.parameters(), lr=config.lr)
    beta = torch.ones((), device=DEVICE)
    for epoch in range(1, config.epochs + 1):
        total = 0.0
        for x, _ in data.batches("train", config.batch_size, shuffle=True, device=DEVICE):  # re-binarized per batch
            optimizer.zero_grad()
            value = loss(x, beta)
            (value / x.shape[0]).backward()
            optimizer.step()
            total -= value.item()
        if not lesson.quick and epoch % 10 == 0:
            print(f"  {config.guide}: epoch {epoch}, training ELBO {total / data.x['train'].shape[0]:.2f}")
    return pair.eval()


pairs = {}
for name in NAMES:
    options = {k: v for k, v in base.guide_options.items() if k in GUIDES[name].options()}
    t0 = time.perf_counter()
    pairs[name] = train(dataclasses.replace(base, guide=name, guide_options=options))
    print(f"{name:11s} trained in {time.perf_counter() - t0:5.1f} s")
if lesson.quick:
    print("(--quick: a few epochs each; the models are far from converged and their differences are mostly noise)")

# %% [markdown]
# ## Evaluate against the exact posterior
#
# For each model/guide pair, on the test images:
#
# * **ELBO**: the bound the pair reaches;
# * **NLL (K samples)**: -log p(x) of the *model*, by importance sampling from its guide
#   (Burda et al. 2016, arXiv:1509.00519). Each guide trained its own decoder, so this compares
#   models, not only guides;
# * **-log p(x) by quadrature**: `grid_posterior` tabulates log p(x, z) on a grid over [-4, 4]^2
#   and sums it — exact up to the grid, an independent check that K samples were enough;
# * the **inference gap** log p(x) - ELBO = E_x KL(q(z|x) || p(z|x)): the nats lost because q is
#   not the posterior, measured here exactly, each guide against its own model (Cremer, Li &
#   Duvenaud 2018, "Inference Suboptimality in Variational Autoencoders", arXiv:1801.03558, split
#   it into an approximation and an amortization gap).

#
# The quick run evaluates on 64 test images, a CPU full run on 1000 (a 2-D grid of 14,400 points
# per image and guide adds up); on a GPU the full run takes the whole test split.

# %%
x_test = data.observations("test", DEVICE)[:64 if lesson.quick else None if DEVICE == "cuda" else 1000]
K = 500 if lesson.quick else 1000
rows = []
for name, pair in pairs.items():
    pyro.set_rng_seed(0)
    result = evaluate(pair.model, pair.guide, x_test, iw_samples=K)
    log_px = grid_posterior(pair.model, x_test)[2]
    rows.append({"guide": name, **result, "nll_quadrature": -log_px.mean().item(),
                 "gap": log_px.mean().item() - result["elbo"],
                 "guide_parameters": sum(p.numel() for p in pair.guide.parameters())})
print(f"{DATASET}, {len(x_test)} test images, nats per image")
print(f"{'guide':11s} {'ELBO':>15s} {'NLL (K=' + str(K) + ')':>16s} {'NLL quadrature':>15s} {'gap':>7s} "
      f"{'KL(q||p(z))':>12s} {'active':>7s} {'guide params':>13s}")
for r in rows:
    print(f"{r['guide']:11s} {r['elbo']:8.2f} ± {r['elbo_se']:.2f} {r['nll']:9.2f} ± {r['nll_se']:.2f} "
          f"{r['nll_quadrature']:15.2f} {r['gap']:7.3f} {r['kl']:12.2f} {r['active_units']:5d}/2 "
          f"{r['guide_parameters']:13d}")
(OUT / "table.json").write_text(json.dumps(rows, indent=2) + "\n")

# %% [markdown]
# ## Reading the table
#
# * The two NLL columns should agree within a few standard errors: importance sampling with K
#   draws from a reasonable guide is accurate in 2-D.
# * The gap column is what the guide costs. In two dimensions the posteriors of a digit VAE are
#   close to Gaussian for most images, so even `diag` loses only a fraction of a nat, and the
#   richer families close part of that; the differences between families grow with the latent
#   dimension and with how far posteriors are from Gaussian.
# * The ELBO differences between guides also include a model effect: a richer guide lets the
#   decoder settle where the posteriors are harder to fit.
# * "active" counts the latent dimensions the model uses (tutorial 04). A dimension whose
#   KL(q||p(z)) is near zero carries no information about x.
#
# The figure shows where the gap comes from. Each row is a test image, each column a guide; the
# black contours are that model's exact p(z|x), the blue shading a histogram of 4000 draws from
# q(z|x). Where the contours are tilted or bent, `diag` can only sit inside them with an
# axis-aligned ellipse — and the reverse KL it minimizes makes it **too narrow** rather than too
# wide: KL(q||p) pays for q's mass where p has little, not for p's mass that q misses. `full`
# tilts; the flows can also bend. Draws are the only picture of q there is for `hamiltonian`
# (and `planar`): its density is known only at the points it drew itself.

# %%
lesson.figure(plots.posterior_panels(pairs, x_test[:4], OUT / "posteriors.png"))

# %% [markdown]
# ## The Hamiltonian guide: a flow that reads the model
#
# Every other guide here computes q(z|x) from x alone: the encoder, and for the flows a
# hypernetwork, must *learn* where each posterior lies. `hamiltonian` draws z_0 from the diagonal
# guide's q_0(z|x) and a momentum rho_0 ~ N(0, I / beta_0), then runs K leapfrog steps of
# Hamiltonian dynamics on the model's own log p(x, z): each step moves z along
# grad_z log p(x, z), the decoder's own word on where the posterior is. Beyond the diagonal guide
# it learns only the dynamics — a step size per step and dimension and the initial inverse
# temperature beta_0 of its momentum, K·d + 1 numbers (7 under `--quick`, with K = 3 and d = 2),
# where each flow above adds a hypernetwork (the "guide params" column).
#
# Its bound lives on an extended space. The leapfrog map preserves volume and the tempering
# scales it by a known factor, so the density of (z_K, rho_K) is known at every draw, and the
# ELBO is that of the extended target p(x, z) N(rho; 0, I): since the momentum integrates out,
# it is still a lower bound on log p(x), and its importance weights are still unbiased for p(x) —
# the NLL column is the same estimator as for the other guides, and the quadrature column checks
# it. Its "gap" and "KL(q||p(z))" columns are the extended space's too (the gap is
# KL(q(z_K, rho_K|x) || p(z|x) N(rho; 0, I)), at least the KL of its z-marginal to p(z|x)).
#
# It is the dearest guide per step: one draw costs K+1 gradients of log p(x, z) through the
# decoder, and training backpropagates through those gradients (a second-order backward), so a
# training step costs many diagonal steps (on an MLP, about 6 at K = 5); the "trained in" lines
# above show the ratio at this size, where small networks spend much of a step on overheads.
# Every importance sample of the evaluation runs the dynamics too.
#
# The cell below prints what it learned and how its numbers compare with `diag`'s, the same
# encoder without the dynamics. Set the learned step sizes and beta_0 beside where they started
# (`step_size` 0.1, `beta0` 0.5): a step size is learned through a softplus, so Adam moves it by
# a small fraction of itself per step, and a short run leaves the dynamics close to where they
# started. In the quick run (K = 3, a few epochs) read neither a win nor a loss into a
# difference of a few tenths of a nat: each gap is measured against its own model, and the
# models differ by more than their guides (compare the KL(q||p(z)) and "active" columns, how much
# each decoder uses z). The full run trains K = 5 steps for 50 epochs.

# %%
hmc = pairs["hamiltonian"].guide
step_sizes = [[round(e, 3) for e in row] for row in hmc.step_sizes().tolist()]
print(f"hamiltonian: K = {hmc.steps} leapfrog steps, tempering {hmc.tempering!r}, "
      f"learned beta_0 = {hmc.beta0().item():.3f}")
print("  learned step sizes (rows: steps, columns: latent dimensions):", step_sizes)
by_name = {r["guide"]: r for r in rows}
h, d = by_name["hamiltonian"], by_name["diag"]
print(f"  {h['guide_parameters'] - d['guide_parameters']} parameters beyond diag's, "
      f"K d + 1 = {hmc.steps * hmc.latent_dim + 1}")
print(f"  gap {h['gap']:.3f} vs diag's {d['gap']:.3f} nats; ELBO {h['elbo'] - d['elbo']:+.2f} and "
      f"NLL {h['nll'] - d['nll']:+.2f} nats relative to diag's")

# %% [markdown]
# ## Interpolations
#
# Each row decodes the straight line between the posterior means of two test images of different
# classes, for one guide's model. All six models have learned a similar 2-D manifold of digits;
# the guide changes where along the line one digit turns into the other, not whether the path
# passes through plausible images.

# %%
labels = data.labels("test")
other = int(torch.nonzero(labels != labels[0])[0, 0])
lesson.figure(plots.interpolations(pairs, x_test[0:1], x_test[other:other + 1], data.obs_shape,
                            OUT / "interpolations.png"))

# %% [markdown]
# ## What to take away
#
# * Changing the posterior family is one word (`guide="iaf"`), and every family is evaluated with
#   the same bounds — the Hamiltonian guide's extended-space bound included.
# * In 2-D the mean-field guide is already close; the differences between families grow with the
#   latent dimension and the complexity of the posterior (tutorial 05 measures them without a grid,
#   with NUTS as the reference).
# * Tutorial 03 asks what each flow family can represent at all, on the 2-D test energies of
#   Rezende & Mohamed.

# %%
lesson.finish()
