# %% [markdown]
# # 08 — Priors and conditioning: beta, KL warm-up, a learned prior, a conditional VAE
#
# Three changes to the *model* side of a VAE, each one word in the run's config:
#
# 1. **beta and KL warm-up** — the objective E_q[log p(x|z)] - beta KL(q(z|x) || p(z)) (the
#    beta-VAE, Higgins et al. 2017, ICLR), and a KL weight that starts near 0 and grows linearly
#    to beta over the first epochs (Bowman et al. 2016, arXiv:1511.06349; Sønderby et al. 2016,
#    arXiv:1602.02282), which keeps latent dimensions from switching off before the decoder has
#    learned to use them.
# 2. **a learned prior** — `--prior realnvp`: N(0, I) pushed through affine couplings, trained with
#    the rest (Xu et al. 2019, arXiv:1905.13452). The ELBO's KL term pulls the prior towards the
#    aggregate posterior q(z) = E_x q(z|x); a fixed N(0, I) cannot move, so the codes must.
# 3. **a conditional VAE** — `--model cvae`: p(x|z, y) and q(z|x, y) given the class label y
#    (Kingma et al. 2014, arXiv:1406.5298; Sohn et al. 2015, NeurIPS), so the sampler draws a
#    chosen digit, and z is left to carry the style.
#
# Bounds are always reported at beta = 1 (the true ELBO), whatever weight training used.
#
# Run: `python tutorials/08_priors_and_conditioning.py [--quick] [--out DIR]`. `--quick` trains
# briefly on the 8x8 digits; the full run trains on MNIST when found (`$PYRO_VAE_DATA`, else
# `../shared/data` beside the repository).

# %%
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

import pyro_vae
from pyro_vae import RunConfig, plots
from pyro_vae.evaluate import evaluate, per_datapoint
from pyro_vae.tutorial import Lesson

import matplotlib.pyplot as plt  # noqa: E402  (after pyro_vae.plots, which selects a file backend)

lesson = Lesson("08", "priors and conditioning")
OUT = lesson.out
DEVICE = lesson.device
DATASET, DATA_DIR = lesson.dataset()

base = RunConfig(dataset=DATASET, data_dir=str(DATA_DIR), latent_dim=16 if lesson.quick else 32,
                 hidden=[128, 128] if lesson.quick else [512, 512], epochs=30 if lesson.quick else 60,
                 batch_size=64 if lesson.quick else 128, lr=2e-3 if lesson.quick else 1e-3, patience=60,
                 seed=0, device=DEVICE)
data = pyro_vae.load_data(DATASET, DATA_DIR)
test = data.observations("test", DEVICE)
test_y = data.labels("test", DEVICE)  # for the conditional VAE of section 3
n_eval = len(test) if lesson.quick or DEVICE == "cuda" else 2000
K_EVAL = 200 if lesson.quick else 1000


def train(name: str, config: RunConfig):
    t0 = time.perf_counter()
    run = pyro_vae.load_run(pyro_vae.fit(dataclasses.replace(config, out=lesson.fresh(name)),
                                         progress=False if lesson.quick else None), DEVICE)
    print(f"{name:14s} trained in {time.perf_counter() - t0:4.0f} s (best epoch {run.train_state.best_epoch}, "
          f"objective {run.config.objective})")
    return run


def bounds(run, x, y=None) -> dict:
    torch.manual_seed(0)
    return evaluate(run.pair.model, run.pair.guide, x[:n_eval], None if y is None else y[:n_eval], iw_samples=K_EVAL)


def report(rows: dict) -> None:
    print(f"test split, {n_eval} images, NLL with K={K_EVAL}; nats per image")
    print(f"{'run':14s} {'ELBO':>8s} {'recon':>8s} {'KL':>7s} {'NLL':>14s} {'active':>7s}")
    for name, b in rows.items():
        print(f"{name:14s} {b['elbo']:8.2f} {b['recon']:8.2f} {b['kl']:7.2f} {b['nll']:7.2f} ± {b['nll_se']:4.2f} "
              f"{b['active_units']:4d}/{b['latent_dim']}")


# %% [markdown]
# ## 1. beta and KL warm-up
#
# Three runs with the same budget: beta = 1 (the ELBO itself), beta = 4 (codes pay four times
# the price per nat), and beta = 1 reached by a linear warm-up over the first third of training
# (`warmup_epochs`). The weight is applied from outside the model: the loss runs model and guide
# under `contract.ScaleLatents(beta)`, which scales their latent sites, so one model serves every
# weight and every schedule. The KL per latent dimension, E_x KL(q(z_j|x) || N(0, 1)), says which
# dimensions carry information: a collapsed dimension carries none.

# %%
WARMUP = base.epochs // 3
runs = {"beta=1": train("beta1", base),
        "beta=4": train("beta4", dataclasses.replace(base, beta=4.0)),
        f"warm-up {WARMUP} ep": train("warmup", dataclasses.replace(base, warmup_epochs=WARMUP))}
rows = {name: bounds(run, test) for name, run in runs.items()}
report(rows)

kl_dims = {}
for name, run in runs.items():
    with torch.no_grad():
        mu, var = run.pair.guide.eval().moments(test)
    kl_dims[name] = np.sort((0.5 * (var + mu ** 2 - 1 - var.log())).mean(0).cpu().numpy())[::-1]

fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
for name, kl in kl_dims.items():
    left.plot(np.arange(1, len(kl) + 1), kl, marker="o", ms=3, label=name)
left.set(xlabel="latent dimension (sorted)", ylabel="E_x KL(q(z_j|x) || N(0,1))  [nats]",
         title="information per dimension")
left.legend()
for name, run in runs.items():
    history = [json.loads(line) for line in (Path(run.config.out) / "metrics.jsonl").read_text().splitlines()]
    right.plot([h["epoch"] for h in history], [h["valid_elbo"] for h in history], label=name)
right.set(xlabel="epoch", ylabel="validation ELBO (beta = 1)", title="training")
right.legend()
fig.tight_layout()
lesson.save(fig, "beta_warmup.png", tight=False)

# %% [markdown]
# beta = 4 buys a smaller KL with a worse reconstruction, and its ELBO at beta = 1 is lower: it
# optimizes another objective. It also keeps fewer dimensions (the tail of the left panel drops to
# zero sooner; on the small 8x8 digits it may keep none). The warm-up run starts as a plain
# autoencoder — the KL costs nearly nothing in the first epochs — so its early validation ELBO is
# poor (right panel); it then catches up, often with more active dimensions than beta = 1 from the
# start. On a budget as short as `--quick`'s the difference is small either way: warm-up pays off
# on long runs.

# %% [markdown]
# ## 2. A learned prior
#
# Two runs with a 2-D latent, so that the prior can be drawn: the standard N(0, I), and
# `prior="realnvp"` (four affine couplings). The panels show the density of each model's prior
# under the codes E_q[z|x] of the test images (coloured by digit).
#
# Both name the Monte-Carlo `elbo`. A learned prior has no closed-form KL to the guide, so it
# trains with that estimator anyway; left unset, the standard prior's run would get the
# analytic-KL `meanfield`, and the comparison would mix the prior with the estimator.

# %%
base2 = dataclasses.replace(base, latent_dim=2, objective="elbo")
priors = {"standard": train("prior-standard", base2), "realnvp": train("prior-realnvp", dataclasses.replace(base2, prior="realnvp"))}
rows2 = {name: bounds(run, test) for name, run in priors.items()}
report(rows2)

fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
for ax, (name, run) in zip(axes, priors.items()):
    with torch.no_grad():
        codes = run.pair.guide.mean(test).cpu()
        lim = float(codes.abs().max()) * 1.1 + 0.5
        g = torch.linspace(-lim, lim, 150)
        zz = torch.stack(torch.meshgrid(g, g, indexing="xy"), -1).reshape(-1, 2).to(DEVICE)
        density = run.pair.model.prior().log_prob(zz).exp().reshape(150, 150).cpu()
    ax.contourf(g, g, density, levels=20, cmap="Greys")
    ax.scatter(codes[:, 0], codes[:, 1], c=test_y.cpu(), cmap="tab10", s=4)
    ax.set(title=f"prior {name}: NLL {rows2[name]['nll']:.2f}", xlabel="z1", ylabel="z2")
fig.tight_layout()
lesson.save(fig, "learned_prior.png", tight=False)

# %% [markdown]
# With N(0, I) the codes are pressed into one round blob, with gaps the sampler still visits.
# The learned prior bends towards where the codes are. Whether that wins on the bound depends on
# the budget: the couplings are more parameters to fit, and the two terms of the ELBO move
# together — a prior that fits q(z) better lets the codes spread out again. Compare the NLLs of
# the table above, and run without `--quick` before drawing conclusions. Sampling a run with a
# learned prior (`pyro-vae sample`) draws from that prior.

# %% [markdown]
# ## 3. A conditional VAE: draw the digit you ask for
#
# `model="cvae"` conditions decoder and guide on the label. The label is an argument, not part of
# the observation: the pair is called as `model(x, y)` and `guide(x, y)`, with y the integer class
# labels (N,) — the contract of every model of the suite (tutorial 01), its optional second
# argument now used. The decoder reads [z | one-hot y], and the guide's encoder joins one-hot y to
# its features h(x) (`models.WithLabel`), so every head of q(z|x, y) sees the label. Training takes
# y from each `(x, y)` batch, and evaluation takes it beside x; the bounds are of log p(x|y).
#
# A conditional NLL, -log p(x|y), is not comparable with an unconditional one: for the true
# distribution, log p(x|y) - log p(x) averages to the mutual information I(x; y), up to
# H(y) = log 10 = 2.30 nats for ten balanced classes, which the label hands over for free. To
# compare like with like, the CVAE is turned into an unconditional model, the mixture
# p(x) = (1/10) sum_y p(x|y) (classes taken as equally likely), whose NLL is estimated from the
# ten importance-sampled estimates of log p(x|y), one per label.

# %%
cvae = train("cvae", dataclasses.replace(base2, model="cvae"))
row_c = bounds(cvae, test, test_y)
report({"vae (standard)": rows2["standard"], "cvae": row_c})
classes = cvae.config.classes
n_mix = n_eval if lesson.quick or DEVICE == "cuda" else 500  # ten estimates per image
x_mix = test[:n_mix]
torch.manual_seed(0)
log_p_given = torch.stack([  # log p(x|y) of every image under every label, (classes, n_mix)
    per_datapoint(cvae.pair.model, cvae.pair.guide, x_mix, K_EVAL,
                  y=torch.full((n_mix,), label, device=DEVICE))["log_px"]
    for label in range(classes)])
mixture_nll = -(torch.logsumexp(log_p_given, 0) - math.log(classes))
print(f"cvae as the mixture (1/{classes}) sum_y p(x|y): NLL {mixture_nll.mean():.2f} ± "
      f"{mixture_nll.std() / math.sqrt(n_mix):.2f} on {n_mix} images (vae: {rows2['standard']['nll']:.2f})")
print(f"-log p(x|y) is lower by {mixture_nll.mean() - row_c['nll']:.2f} nats: what knowing the label is worth "
      f"to this model (at most log {classes} = {math.log(classes):.2f})")

model = cvae.pair.model
torch.manual_seed(1)
z = model.prior().sample((10,))  # one style per column, the same down each row
grid = torch.cat([model.decode_mean(z, torch.full((10,), digit)) for digit in range(10)])
lesson.figure(plots.image_grid(grid, data.obs_shape, OUT / "cvae_digits.png", nrow=10,
                               title="row: the label asked for; column: one z from the prior"))

x8, y8 = test[:8], test_y[:8]
codes = cvae.pair.guide.mean(x8, y8)  # the style of eight test images, their label known
transfer = torch.cat([x8] + [model.decode_mean(codes, torch.full((8,), digit)) for digit in range(10)])
lesson.figure(plots.image_grid(transfer, data.obs_shape, OUT / "cvae_style.png", nrow=8,
                               title="top: test images; below: their code decoded as 0, 1, ..., 9"))

# %% [markdown]
# The mixture's NLL is the fair comparison with the VAE of section 2; the gap between it and
# -log p(x|y) can never exceed log 10, since one term of the mixture is p(x|y) / 10.
#
# Each row of `cvae_digits.png` is the digit asked for; each column keeps one z, so what z holds
# — slant, stroke width — stays the same across classes. `cvae_style.png` encodes real test
# images with q(z|x, y) and decodes their code under every label: the style moves, the identity
# is the label's. From the command line the same model draws a chosen digit with
#
#     pyro-vae train --model cvae --dataset mnist --out runs/cvae
#     pyro-vae sample runs/cvae --label 7 --out sevens.png

# %%
(OUT / "table.json").write_text(json.dumps({**rows, **rows2, "cvae": row_c,
                                           "cvae_mixture_nll": mixture_nll.mean().item()}, indent=2) + "\n")
lesson.finish()
