"""Semi-supervised VAEs: Kingma et al.'s M2, the label a latent site where it is not observed.

The model is p(y) p(z) p(x|y, z) with a uniform p(y); the guide q(y|x) q(z|x, y). A labelled image
is scored with y observed (the guide then has no y site), an unlabelled one with y summed out
exactly: the guide's y site is marked for parallel enumeration (``config_enumerate``), so
``TraceEnum_ELBO`` in training and the suite's evaluation alike score every class at once, never
a sampled one. Training maximizes Kingma et al.'s objective (their eq. 9)

    J_alpha = sum_labelled L(x, y) + sum_unlabelled U(x) + alpha * E_labelled[log q(y|x)],

estimated on batches that hold a fixed number of labelled images (``TrainingPlan``), each term
weighted by its set's size over its rows in the batch, so the estimate is unbiased however few
labels there are.

References: Kingma, Rezende, Mohamed & Welling 2014, "Semi-Supervised Learning with Deep
Generative Models", arXiv:1406.5298 (models M2 and M1+M2); Pyro's example ``ss_vae_M2.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import TraceEnum_ELBO, config_enumerate
from torch import nn

from . import contract, nets, objectives
from .errors import PyroVAEError
from .models import ConditionalVAE, labelled_decoder_and_guide

# The label set's draw has its own stream, derived from the run's seed: the same --seed and
# --labelled give the same labelled images whatever else the run draws.
_LABEL_SEED = 20141203


class M2(ConditionalVAE):
    """p(y) p(z) p(x|y, z): the decoder sees z joined with one-hot y; p(y) is uniform."""

    log_terms = None  # two latent sites (y and z): scored through the traces, not the single-site path

    def forward(self, x: torch.Tensor, y=None):
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(logits=x.new_zeros(self.classes)), obs=y)
            z = pyro.sample("z", self.prior())
            pyro.sample("x", self.likelihood(self._decode(z, y)), obs=x)
        return z

    @torch.no_grad()
    def reconstruct(self, guide, x: torch.Tensor, y=None) -> torch.Tensor:
        """E[x|z, y] for z ~ q(z|x, y), with y the guide's argmax q(y|x) where none is given."""
        y = guide.logits(x).argmax(-1) if y is None else y
        return self.decode_mean(guide.z_guide.dist(x, y).sample(), y)


class M2Guide(nn.Module):
    """q(y|x) q(z|x, y): a classifier network, and any registered guide family on the encoder
    features joined with one-hot y. Without a label, y is enumerated in parallel."""

    def __init__(self, classifier: nn.Module, z_guide: nn.Module, classes: int):
        super().__init__()
        self.classifier, self.z_guide, self.classes = classifier, z_guide, classes

    def elements_per_sample(self, x) -> int:
        """q(z|x, y)'s count for one value of y; the classifier runs once per datapoint."""
        from .evaluate import guide_elements

        return guide_elements(self.z_guide, x)

    def enumerated_values(self, y=None) -> int:
        """Values each particle is scored at: every class where y is not given (enumerated in
        parallel, so the model decodes every draw once per class and a chunk of the evaluation holds
        that many times a labelled one's numbers), one where it is."""
        return self.classes if y is None else 1

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Unnormalized log q(y|x), shape (N, classes)."""
        return self.classifier(x)

    def _forward(self, x, y):
        with pyro.plate("data", x.shape[0]):
            if y is None:
                y = pyro.sample("y", dist.Categorical(logits=self.logits(x)))
            return pyro.sample("z", self.z_guide.dist(x, y))

    def forward(self, x: torch.Tensor, y=None):
        return config_enumerate(self._forward, "parallel")(x, y)

    @torch.no_grad()
    def site_means(self, x: torch.Tensor, y=None) -> dict[str, torch.Tensor]:
        """E_q[z|x] = sum_y q(y|x) E_q[z|x, y] in closed form over y (E_q[z|x, y] where y is given)."""
        if y is not None:
            return {"z": self.z_guide.mean(x, y)}
        probs = self.logits(x).softmax(-1)  # (N, C)
        every = torch.arange(self.classes, device=x.device)
        means = torch.stack([self.z_guide.mean(x, every[c].expand(x.shape[0])) for c in range(self.classes)], -1)
        return {"z": (means * probs[:, None, :]).sum(-1)}


def build(config, obs_shape, likelihood, make_guide, make_prior):
    """Model and guide of ``--model m2``: q(y|x) has its own network of the run's architecture
    (as in Kingma et al. and Pyro's example), so the classifier's features are not those shaped
    by reconstruction."""
    latent, decoder, z_guide = labelled_decoder_and_guide(config, obs_shape, likelihood, make_guide, "m2")
    trunk, trunk_features, _ = nets.build(config.arch, obs_shape, 1, config.hidden, config.activation, 1,
                                          batch_norm=config.batch_norm, **config.arch_options)
    classifier = nn.Sequential(trunk, nn.Linear(trunk_features, config.classes))
    model = M2(decoder, likelihood, make_prior(z_guide, latent), latent, config.classes)
    return model, M2Guide(classifier, z_guide, config.classes)


def labelled_rows(labels: torch.Tensor, n: int, classes: int, seed: int) -> torch.Tensor:
    """The rows of ``n`` labelled training images, as class-balanced as the split allows: n //
    classes of every class and the remainder one more for classes drawn at random, a class with
    too few images giving all it has and its share passing to the others; sorted. Drawn from
    ``seed`` alone."""
    total = labels.shape[0]
    if not isinstance(n, int) or isinstance(n, bool) or n < classes or n > total:
        raise PyroVAEError(f"--labelled must be between the number of classes ({classes}) and the size of the "
                           f"training split ({total}), got {n!r}")
    rng = np.random.default_rng([_LABEL_SEED, seed])
    members = [np.flatnonzero(labels.numpy() == c) for c in range(classes)]
    quota = np.zeros(classes, dtype=np.int64)
    left = n
    while left:  # fill the classes evenly, in a random order each round, until n are taken
        open_ = [c for c in rng.permutation(classes) if quota[c] < members[c].size]
        if left >= len(open_):
            quota[open_] += left // len(open_)
        else:
            quota[open_[:left]] += 1
        quota = np.minimum(quota, [m.size for m in members])
        left = n - int(quota.sum())
    rows = [rng.choice(members[c], quota[c], replace=False) for c in range(classes)]
    return torch.from_numpy(np.sort(np.concatenate(rows))).long()


@dataclass
class TrainingPlan:
    """Which training images are labelled, and how batches mix them with the unlabelled ones.

    Every batch holds ``labelled_batch`` labelled rows first, then ``unlabelled_batch`` unlabelled
    ones (label -1). An epoch is one pass over the unlabelled images; the labelled ones are
    cycled, reshuffled on every pass, so each step sees the same share of them however few they
    are. With every image labelled, an epoch is one pass over them.
    """

    labelled: torch.Tensor
    unlabelled: torch.Tensor
    labelled_batch: int
    unlabelled_batch: int
    alpha: float

    @classmethod
    def make(cls, config, train_labels: torch.Tensor) -> "TrainingPlan":
        total = train_labels.shape[0]
        n = total if config.labelled is None else config.labelled
        labelled = labelled_rows(train_labels, n, config.classes, config.seed)
        mask = torch.ones(total, dtype=torch.bool)
        mask[labelled] = False
        unlabelled = torch.arange(total)[mask]
        size = min(config.batch_size, total)
        if unlabelled.numel() == 0:
            labelled_batch, unlabelled_batch = size, 0
        else:
            labelled_batch = min(n, max(1, round(config.labelled_share * size)))
            unlabelled_batch = min(unlabelled.numel(), max(1, size - labelled_batch))
        alpha = 0.1 * total if config.alpha is None else config.alpha
        return cls(labelled, unlabelled, labelled_batch, unlabelled_batch, float(alpha))

    @property
    def steps_per_epoch(self) -> int:
        if self.unlabelled_batch == 0:
            return max(1, self.labelled.numel() // self.labelled_batch)
        return max(1, self.unlabelled.numel() // self.unlabelled_batch)

    def batches(self, data, device=None):
        """This epoch's (x, y) batches: labelled rows (their labels) first, then unlabelled (-1)."""
        steps = self.steps_per_epoch
        unlabelled = self.unlabelled[torch.randperm(self.unlabelled.numel())]
        passes = math.ceil(steps * self.labelled_batch / self.labelled.numel())
        labelled = torch.cat([self.labelled[torch.randperm(self.labelled.numel())] for _ in range(passes)])
        for step in range(steps):
            rows_l = labelled[step * self.labelled_batch:(step + 1) * self.labelled_batch]
            rows_u = unlabelled[step * self.unlabelled_batch:(step + 1) * self.unlabelled_batch]
            x, y = data.batch("train", torch.cat([rows_l, rows_u]), device)
            y = y.clone()
            y[self.labelled_batch:] = -1
            yield x, y

    def record(self) -> dict:
        return {"labelled_rows": self.labelled.tolist(), "labelled_batch": self.labelled_batch,
                "unlabelled_batch": self.unlabelled_batch, "alpha": self.alpha}


class SemiSupervisedLoss(nn.Module):
    """``loss(x, beta, y)`` on a plan's batch: minus the estimate of J_alpha (module docstring)
    times batch size / N_train, so that per row it reads as the objective per training image.

    The labelled rows are scored by the run's objective (``elbo`` or ``meanfield``) with y
    observed, the unlabelled ones by ``TraceEnum_ELBO`` with y enumerated; alpha multiplies the
    mean log q(y|x) over the labelled images, as in the paper.
    """

    def __init__(self, model, guide, objective: str, plan: TrainingPlan, particles: int = 1):
        super().__init__()
        self.model, self.guide, self.plan = model, guide, plan
        self.labelled_loss = objectives.loss_fn(objective, model, guide, particles)
        enum = TraceEnum_ELBO(num_particles=particles, vectorize_particles=True, max_plate_nesting=1)
        self.unlabelled_loss = enum(objectives.Scaled(model), objectives.Scaled(guide))
        self.sizes = (plan.labelled.numel(), plan.unlabelled.numel())

    def forward(self, x: torch.Tensor, beta: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        (n_l, n_u), b_l = self.sizes, self.plan.labelled_batch
        x_l, y_l, x_u = x[:b_l], y[:b_l], x[b_l:]
        total = 0.0
        if b_l:
            log_q = torch.distributions.Categorical(logits=self.guide.logits(x_l)).log_prob(y_l)
            total = total + (n_l / b_l) * self.labelled_loss(x_l, beta, y_l) - self.plan.alpha * log_q.mean()
        if x_u.shape[0]:
            total = total + (n_u / x_u.shape[0]) * self.unlabelled_loss(x_u, beta)
        return total * x.shape[0] / (n_l + n_u)


SEMI_SUPERVISED_OBJECTIVES = ("elbo", "meanfield")


def check_objective(name: str) -> None:
    if name not in SEMI_SUPERVISED_OBJECTIVES:
        raise PyroVAEError(f"--model m2 trains its unlabelled images with TraceEnum_ELBO (the label summed out); "
                           f"--objective chooses the labelled images' bound: {', '.join(SEMI_SUPERVISED_OBJECTIVES)}, "
                           f"not {name}")


@torch.no_grad()
def classification_error(guide, x: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    """The share of ``x`` whose argmax q(y|x) is not its label: a guide with ``logits(x)``, or any
    guide with a categorical site ``y`` (read from its trace)."""
    wrong = 0
    for i in range(0, x.shape[0], batch_size):
        wrong += int((predict(guide, x[i:i + batch_size]) != labels[i:i + batch_size]).sum())
    return wrong / x.shape[0]


@torch.no_grad()
def predict(guide, x: torch.Tensor) -> torch.Tensor:
    """argmax_y q(y|x) for every row of ``x``."""
    if callable(getattr(guide, "logits", None)):
        return guide.logits(x).argmax(-1)
    trace = pyro.poutine.trace(guide).get_trace(x)
    site = trace.nodes.get("y")
    if site is None or site["type"] != "sample" or not hasattr(site["fn"], "logits"):
        raise PyroVAEError("the guide has no categorical site 'y' to classify with")
    return site["fn"].logits.argmax(-1).expand(x.shape[:1])


@torch.no_grad()
def style_analogies(model, guide, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Kingma et al.'s analogies (their Fig. 1): each image's style E_q[z|x, y], with its own
    label, decoded with every class. Returns (rows, 1 + classes, *obs_shape): the image first."""
    z = torch.cat(list(contract.site_means(guide, x, y).values()), -1)
    decoded = [model.decode_mean(z, torch.full((x.shape[0],), c, device=x.device)) for c in range(model.classes)]
    return torch.stack([x.reshape(decoded[0].shape)] + decoded, 1)
