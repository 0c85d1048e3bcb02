"""The semi-supervised M2 (``--model m2``): its losses against the sums written by hand, its bounds
against the closed form of a linear-Gaussian M2, the labelled subset and the mixed batches, a toy
problem it must solve from four labels, ``encode`` round trips, and the command line."""

import json
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from pyro.infer import TraceEnum_ELBO
from torch import nn

import pyro_vae
from pyro_vae import contract, data as data_mod
from pyro_vae.cli import main
from pyro_vae.config import RunConfig
from pyro_vae.evaluate import evaluate, per_datapoint
from pyro_vae.guides import DiagonalGaussian
from pyro_vae.models import StandardNormal, WithLabel
from pyro_vae.run import load_data
from pyro_vae.semisupervised import M2, M2Guide, SemiSupervisedLoss, TrainingPlan, classification_error, \
    labelled_rows, predict, style_analogies
from cli_errors import user_error
from linear_gaussian import SIGMA, FixedScaleNormal
from test_conditional import LinearCVAE, double  # noqa: F401 (a fixture)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny_m2(classes: int, d: int = 6, latent: int = 2, sigma: float = 0.7):
    """An M2 of small random networks with a fixed-scale Gaussian likelihood."""
    torch.manual_seed(0)
    decoder = nn.Sequential(nn.Linear(latent + classes, 8), nn.Tanh(), nn.Linear(8, d))
    model = M2(decoder, FixedScaleNormal(sigma), StandardNormal(latent), latent, classes)
    z_guide = DiagonalGaussian(WithLabel(nn.Sequential(nn.Linear(d, 8), nn.Tanh()), classes), 8 + classes, latent)
    return model, M2Guide(nn.Linear(d, classes), z_guide, classes)


def _log_p_x_y_z(model, x, y, z):
    """log p(y) + log p(z) + log p(x|y, z) of the tiny M2, from its layers; y broadcasts with z."""
    code = F.one_hot(y, model.classes).to(z)
    lead = torch.broadcast_shapes(z.shape[:-1], code.shape[:-1])
    mean = model.decoder(torch.cat([z.expand(lead + z.shape[-1:]), code.expand(lead + code.shape[-1:])], -1))
    log_lik = dist.Normal(mean, model.likelihood.sigma).log_prob(x).sum(-1)
    return log_lik + dist.Normal(0.0, 1.0).log_prob(z).sum(-1) - math.log(model.classes)


def unlabelled_by_hand(model, guide, x):
    """U(x) = sum_y q(y|x) [log p(x, y, z_y) - log q(z_y|x, y) - log q(y|x)], z_y ~ q(z|x, y) drawn
    for every class at once (the shape, hence the random numbers, of parallel enumeration)."""
    every = torch.arange(model.classes)[:, None]  # (C, 1)
    q_z = guide.z_guide.dist(x, every)  # batch (C, N)
    z = q_z.rsample()
    log_q_y = guide.logits(x).log_softmax(-1).T  # (C, N)
    per_class = _log_p_x_y_z(model, x, every.expand(-1, x.shape[0]), z) - q_z.log_prob(z)
    return (log_q_y.exp() * (per_class - log_q_y)).sum(0)


def labelled_by_hand(model, guide, x, y, analytic: bool):
    """L(x, y) = log p(y) + E_q log p(x|y, z) - KL(q(z|x, y) || p(z)): one draw, the KL in closed
    form (``analytic``) or as log q - log p of that draw."""
    q_z = guide.z_guide.dist(x, y)
    z = q_z.rsample()
    if not analytic:
        return _log_p_x_y_z(model, x, y, z) - q_z.log_prob(z)
    prior = dist.Normal(torch.zeros_like(z), 1.0).to_event(1)
    log_lik = _log_p_x_y_z(model, x, y, z) - prior.log_prob(z) + math.log(model.classes)
    return log_lik - math.log(model.classes) - torch.distributions.kl_divergence(q_z, prior)


@pytest.mark.usefixtures("double")
@pytest.mark.parametrize("classes", [2, 10])
def test_enumerated_loss_is_the_explicit_sum_over_classes(classes):
    model, guide = tiny_m2(classes)
    x = torch.randn(5, 6)
    pyro.set_rng_seed(3)
    enumerated = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(model, guide, x)
    params = list(guide.classifier.parameters()) + list(model.decoder.parameters())
    grads = torch.autograd.grad(enumerated, params)
    pyro.set_rng_seed(3)
    by_hand = -unlabelled_by_hand(model, guide, x).sum()
    torch.testing.assert_close(enumerated, by_hand, rtol=0, atol=1e-6)
    for g, h in zip(grads, torch.autograd.grad(by_hand, params)):
        torch.testing.assert_close(g, h, rtol=1e-6, atol=1e-6)
    # the suite's evaluation sums y out the same way: its one-sample ELBO is U(x) per image
    pyro.set_rng_seed(3)
    elbo = per_datapoint(model, guide, x, 1)["elbo"]
    pyro.set_rng_seed(3)
    torch.testing.assert_close(elbo, unlabelled_by_hand(model, guide, x), rtol=0, atol=1e-6)


def _plan(n_l: int, n_u: int, b_l: int, b_u: int, alpha: float) -> TrainingPlan:
    return TrainingPlan(torch.arange(n_l), torch.arange(n_l, n_l + n_u), b_l, b_u, alpha)


@pytest.mark.usefixtures("double")
@pytest.mark.parametrize("objective", ["elbo", "meanfield"])
def test_mixed_batch_loss_is_kingmas_objective_by_hand(objective):
    """-(N_l/b_l sum L(x, y) + alpha mean log q(y|x) + N_u/b_u sum U(x)) * b / N on a batch of b_l
    labelled rows then b_u unlabelled ones (label -1)."""
    model, guide = tiny_m2(3)
    plan = _plan(n_l=12, n_u=40, b_l=3, b_u=5, alpha=7.5)
    loss = SemiSupervisedLoss(model, guide, objective, plan)
    x, y = torch.randn(8, 6), torch.tensor([2, 0, 1, -1, -1, -1, -1, -1])
    pyro.set_rng_seed(5)
    value = loss(x, torch.ones(()), y)
    pyro.set_rng_seed(5)
    x_l, y_l, x_u = x[:3], y[:3], x[3:]
    labelled = labelled_by_hand(model, guide, x_l, y_l, analytic=objective == "meanfield").sum()
    log_q = guide.logits(x_l).log_softmax(-1).gather(-1, y_l[:, None]).squeeze(-1)
    unlabelled = unlabelled_by_hand(model, guide, x_u).sum()
    objective_value = 12 / 3 * labelled + 7.5 * log_q.mean() + 40 / 5 * unlabelled
    torch.testing.assert_close(value, -objective_value * 8 / 52, rtol=0, atol=1e-6)
    # the classification term is what alpha weighs: at alpha = 0 it is gone
    loss.plan.alpha = 0.0
    pyro.set_rng_seed(5)
    torch.testing.assert_close(loss(x, torch.ones(()), y), -(objective_value - 7.5 * log_q.mean()) * 8 / 52,
                               rtol=0, atol=1e-6)


class ExactLabelPosterior(nn.Module):
    """log p(y|x) + const of the linear-Gaussian M2: log N(x; b + M e_y, W W^T + sigma^2 I)."""

    def __init__(self, lin: LinearCVAE, uniform: bool = False):
        super().__init__()
        self.lin, self.uniform = lin, uniform

    def forward(self, x):
        ys = torch.arange(self.lin.C)
        logits = torch.stack([self.lin.log_px_given_y(x, c.expand(x.shape[0])) for c in ys], -1)
        return torch.zeros_like(logits) if self.uniform else logits


def linear_m2(uniform_classifier: bool = False):
    lin = LinearCVAE()
    cvae = lin.model()
    model = M2(cvae.decoder, FixedScaleNormal(SIGMA), StandardNormal(lin.L), lin.L, lin.C)
    guide = M2Guide(ExactLabelPosterior(lin, uniform_classifier), lin.exact_guide(), lin.C)
    return lin, model, guide


def exact_log_px(lin: LinearCVAE, x):
    per_class = torch.stack([lin.log_px_given_y(x, torch.full((x.shape[0],), c)) for c in range(lin.C)])
    return torch.logsumexp(per_class, 0) - math.log(lin.C)


@pytest.mark.usefixtures("double")
def test_bounds_of_a_linear_gaussian_m2_are_its_closed_forms():
    """With q(z|x, y) the exact posterior, every importance weight with y summed out is p(x): the
    K-sample estimate is log p(x) exactly, for any K. The ELBO is log p(x) - KL(q(y|x) || p(y|x)):
    log p(x) itself with the exact q(y|x), E_uniform log p(x, y) + log C with a uniform one."""
    lin, model, guide = linear_m2()
    x, y = lin.data(40)
    log_px = exact_log_px(lin, x)
    result = evaluate(model, guide, x, iw_samples=7, batch_size=16)
    assert result["nll"] == pytest.approx(-log_px.mean().item(), abs=1e-8)
    assert result["elbo"] == pytest.approx(log_px.mean().item(), abs=1e-8)
    assert set(result["kl_per_site"]) == {"y", "z"} and result["latent_dims"] == {"z": lin.L}

    lin, model, guide = linear_m2(uniform_classifier=True)
    result = evaluate(model, guide, x, iw_samples=7, batch_size=16)
    per_class = torch.stack([lin.log_px_given_y(x, torch.full((40,), c)) for c in range(lin.C)]) - math.log(lin.C)
    assert result["nll"] == pytest.approx(-log_px.mean().item(), abs=1e-8)
    assert result["elbo"] == pytest.approx((per_class.mean(0) + math.log(lin.C)).mean().item(), abs=1e-8)
    assert result["kl_per_site"]["y"] == pytest.approx(0.0, abs=1e-12)  # uniform q(y|x) against uniform p(y)
    assert result["elbo"] < -result["nll"] - 0.05


@pytest.mark.usefixtures("double")
def test_classifier_and_posterior_means_of_the_linear_m2():
    lin, model, guide = linear_m2()
    x, y = lin.data(200, seed=1)
    exact = torch.stack([lin.log_px_given_y(x, torch.full((200,), c)) for c in range(lin.C)], -1).argmax(-1)
    assert torch.equal(predict(guide, x), exact)
    assert classification_error(guide, x, y, batch_size=64) == pytest.approx((exact != y).double().mean().item())
    # E_q[z|x] sums the exact posterior means over q(y|x); given y, it is that class's mean
    probs = guide.logits(x).softmax(-1)
    means = torch.stack([lin.posterior_mean(x, torch.full((200,), c)) for c in range(lin.C)], -1)
    torch.testing.assert_close(contract.site_means(guide, x)["z"], (means * probs[:, None]).sum(-1))
    torch.testing.assert_close(contract.site_means(guide, x, y)["z"], lin.posterior_mean(x, y))
    # style analogies: the image first, then its style decoded with every class
    grid = style_analogies(model, guide, x[:3], y[:3])
    assert grid.shape == (3, 1 + lin.C, lin.D)
    torch.testing.assert_close(grid[:, 0], x[:3])
    for c in range(lin.C):
        style = lin.posterior_mean(x[:3], y[:3])
        torch.testing.assert_close(grid[:, 1 + c], lin.mean_image(style, torch.full((3,), c)))


def test_labelled_rows_are_class_balanced_and_seeded():
    labels = torch.arange(1000) % 10
    labels = labels[torch.randperm(1000, generator=torch.Generator().manual_seed(0))]
    rows = labelled_rows(labels, 43, 10, seed=0)
    assert rows.shape == (43,) and rows.unique().numel() == 43 and torch.equal(rows, rows.sort().values)
    counts = torch.bincount(labels[rows], minlength=10)
    assert counts.sum() == 43 and counts.max() - counts.min() <= 1
    assert torch.equal(rows, labelled_rows(labels, 43, 10, seed=0))
    assert not torch.equal(rows, labelled_rows(labels, 43, 10, seed=1))
    # a class with too few images gives all it has; the others make up the number
    uneven = torch.cat([torch.zeros(5, dtype=torch.long), torch.ones(50, dtype=torch.long), torch.full((45,), 2)])
    for n in (30, 54, 100):
        counts = torch.bincount(uneven[labelled_rows(uneven, n, 3, seed=2)], minlength=3)
        assert counts.sum() == n and counts[0] == 5
        assert abs(int(counts[1]) - int(counts[2])) <= 1 if n < 100 else counts.tolist() == [5, 50, 45]
    for bad in (9, 1001, 0):
        with pytest.raises(pyro_vae.PyroVAEError, match="--labelled must be between"):
            labelled_rows(labels, bad, 10, seed=0)


def test_plan_batches_mix_a_fixed_share_of_labels():
    labels = torch.arange(300) % 3
    x = torch.rand(300, 1, 2, 2)
    d = data_mod.Data("toy", {s: x for s in data_mod.SPLITS}, {s: labels for s in data_mod.SPLITS}, (1, 2, 2),
                      "gaussian", "none")
    config = RunConfig(model="m2", labelled=9, classes=3, batch_size=40, labelled_share=0.25, seed=4)
    plan = TrainingPlan.make(config, labels)
    assert (plan.labelled_batch, plan.unlabelled_batch, plan.alpha) == (9, 31, 30.0)  # 0.25 * 40 capped at 9
    assert plan.steps_per_epoch == 291 // 31
    seen_u, seen_l = [], []
    for xb, yb in plan.batches(d):
        assert xb.shape == (40, 1, 2, 2) and yb.shape == (40,)
        rows_l = [int(torch.nonzero((x == xb[i]).all(-1).all(-1).all(-1))[0]) for i in range(9)]
        assert set(rows_l) <= set(plan.labelled.tolist()) and yb[:9].tolist() == labels[rows_l].tolist()
        assert (yb[9:] == -1).all()
        seen_l += rows_l
        seen_u += [int(torch.nonzero((x == xb[i]).all(-1).all(-1).all(-1))[0]) for i in range(9, 40)]
    assert len(set(seen_u)) == len(seen_u) == plan.steps_per_epoch * 31  # each unlabelled row once at most
    assert not set(seen_u) & set(plan.labelled.tolist())
    counts = torch.bincount(torch.tensor(seen_l), minlength=300)[plan.labelled]
    assert counts.max() - counts.min() <= 1  # the labelled rows cycled evenly


# ---------------------------------------------------------------------------------------------
# training, through the command line


def _toy_npz(path, n: int = 1500, d: int = 4, seed: int = 0) -> str:
    """Two Gaussian clusters, 2 * 2.5 * sqrt(d) = 10 standard deviations apart, labelled 0 and 1."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, d)) + np.where(y[:, None] == 1, 2.5, -2.5)
    np.savez(path, x=x.astype(np.float32), y=y)
    return str(path)


def test_m2_learns_two_clusters_from_four_labels(tmp_path, capsys):
    toy = _toy_npz(tmp_path / "toy.npz")
    run = tmp_path / "run"
    assert main(["train", "--model", "m2", "--dataset", toy, "--labelled", "4", "--likelihood", "gaussian",
                 "--latent-dim", "2", "--hidden", "32", "--epochs", "40", "--batch-size", "100", "--lr", "3e-3",
                 "--out", str(run), "--device", "cpu", "--quiet"]) == 0
    record = json.loads((run / "labelled.json").read_text())
    config = json.loads((run / "config.json").read_text())
    assert (config["labelled"], config["alpha"], len(record["labelled_rows"])) == (4, 0.1 * 1200, 4)
    train_labels = load_data(RunConfig.from_dict(config)).y["train"]
    assert sorted(train_labels[record["labelled_rows"]].tolist()) == [0, 0, 1, 1]
    capsys.readouterr()
    assert main(["evaluate", str(run), "--iw-samples", "50", "--device", "cpu", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["classification_error"] < 0.05
    assert math.isfinite(result["nll"]) and result["nll"] <= -result["elbo"] + 1e-6
    assert set(result["kl_per_site"]) == {"y", "z"}


TINY = ["--dataset", "digits", "--model", "m2", "--labelled", "30", "--hidden", "32", "--latent-dim", "2",
        "--batch-size", "64", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def m2_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("m2") / "run"
    pyro.set_rng_seed(0)
    assert main(["train", *TINY, "--epochs", "2", "--out", str(run)]) == 0
    return run


def test_resumed_m2_run_continues_bit_for_bit(m2_run, tmp_path):
    straight = tmp_path / "straight"
    assert main(["train", *TINY, "--epochs", "3", "--out", str(straight)]) == 0
    resumed = tmp_path / "resumed"
    import shutil

    shutil.copytree(m2_run, resumed)
    assert main(["train", "--resume", "--epochs", "3", "--out", str(resumed), "--quiet"]) == 0
    a, b = (pyro_vae.load_run(r, which="last.pt") for r in (straight, resumed))
    for key, value in a.pair.state_dict().items():
        assert torch.equal(value, b.pair.state_dict()[key]), key
    assert [h["valid_error"] for h in a.payload["train_state"]["history"]] == \
        [h["valid_error"] for h in b.payload["train_state"]["history"]]


def test_samples_by_label_and_style_analogies(m2_run, tmp_path):
    from pyro_vae.plots import image_grid

    model = pyro_vae.load_run(m2_run).pair.model
    png = tmp_path / "seven.png"
    assert main(["sample", str(m2_run), "--label", "7", "-n", "6", "--out", str(png), "--device", "cpu"]) == 0
    pyro.set_rng_seed(0)
    by_hand = image_grid(model.sample(6, torch.full((6,), 7)), (1, 8, 8), tmp_path / "hand.png", nrow=10)
    assert png.read_bytes() == by_hand.read_bytes()
    styles = tmp_path / "styles.png"
    assert main(["sample", str(m2_run), "--style-of", "0,5", "--out", str(styles), "--device", "cpu"]) == 0
    run = pyro_vae.load_run(m2_run)
    data = load_data(run.config)
    x, y = data.observations("test")[[0, 5]], data.labels("test")[[0, 5]]
    grid = style_analogies(run.pair.model, run.pair.guide, x, y)
    by_hand = image_grid(grid.reshape((-1, 1, 8, 8)), (1, 8, 8), tmp_path / "styles_hand.png", nrow=11)
    assert styles.read_bytes()[:8] == PNG_MAGIC and styles.read_bytes() == by_hand.read_bytes()


@pytest.fixture(scope="module")
def m1_run(tmp_path_factory):
    """A digits VAE with a 3-dimensional z: the M1 of M1+M2."""
    vae = tmp_path_factory.mktemp("m1") / "run"
    assert main(["train", "--dataset", "digits", "--hidden", "32", "--latent-dim", "3", "--epochs", "2",
                 "--out", str(vae), "--device", "cpu", "--quiet"]) == 0
    return vae


def _encoded(vae, path, *flags):
    assert main(["encode", str(vae), "--out", str(path), "--device", "cpu", *flags]) == 0
    run = pyro_vae.load_run(vae)
    return run, load_data(run.config)


def test_encode_round_trips_and_m2_keeps_the_splits(m1_run, tmp_path, capsys):
    vae, codes = m1_run, tmp_path / "codes.npz"
    run, digits = _encoded(vae, codes, "--split", "all")
    with np.load(codes) as f:
        arrays = {k: f[k] for k in f.files}
    assert arrays["sites"].tolist() == ["z"] and arrays["site_sizes"].tolist() == [3]
    start = 0
    for split in data_mod.SPLITS:  # rows of each split in order: the guide's means and the labels
        n = digits.x[split].shape[0]
        assert (arrays["split"][start:start + n] == split).all()
        expected = run.pair.guide.eval().mean(digits.observations(split)).numpy()
        np.testing.assert_allclose(arrays["x"][start:start + n], expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(arrays["y"][start:start + n], digits.labels(split).numpy())
        start += n
    # M2 on the codes (M1+M2): its data are the codes, split as the first model's
    m2 = tmp_path / "m2"
    assert main(["train", "--model", "m2", "--dataset", str(codes), "--likelihood", "gaussian", "--labelled", "20",
                 "--hidden", "16", "--latent-dim", "2", "--epochs", "1", "--out", str(m2), "--device", "cpu",
                 "--quiet"]) == 0
    stacked = load_data(pyro_vae.load_run(m2).config)
    start = 0
    for split in data_mod.SPLITS:
        n = digits.x[split].shape[0]
        np.testing.assert_array_equal(stacked.x[split].numpy(), arrays["x"][start:start + n])
        assert torch.equal(stacked.y[split], digits.y[split])
        start += n
    # one draw instead of the means; a single split
    drawn = tmp_path / "drawn.npz"
    assert main(["encode", str(m2), "--split", "test", "--what", "sample", "--out", str(drawn), "--device", "cpu"]) == 0
    with np.load(drawn) as f:
        assert f["x"].shape == (digits.x["test"].shape[0], 2) and (f["split"] == "test").all()
    # a file of one split is no dataset: it says what is missing
    message = user_error(capsys, ["train", "--dataset", str(drawn), "--out", str(tmp_path / "x"), "--quiet"])
    assert "no rows of the train, valid split" in message


def test_command_line_errors(tmp_path, capsys, m2_run):
    out = str(tmp_path / "never")
    base = ["train", "--dataset", "digits", "--model", "m2", "--out", out, "--quiet", "--epochs", "1"]
    assert "--labelled must be between" in user_error(capsys, base + ["--labelled", "5000"])
    assert "--labelled must be between the number of classes (10)" in user_error(capsys, base + ["--labelled", "9"])
    assert "--labelled must be a positive integer" in user_error(capsys, base + ["--labelled", "0"])
    unlabelled = tmp_path / "nolabels.npz"
    np.savez(unlabelled, x=np.random.default_rng(0).random((50, 4)).astype(np.float32))
    message = user_error(capsys, ["train", "--dataset", str(unlabelled), "--model", "m2", "--out", out, "--quiet"])
    assert "needs labelled data" in message
    assert "--labelled applies to" in user_error(capsys, ["train", "--dataset", "digits", "--labelled", "20",
                                                          "--out", out, "--quiet"])
    assert "TraceEnum_ELBO" in user_error(capsys, base + ["--labelled", "20", "--objective", "iwae"])
    assert "--alpha" in user_error(capsys, base + ["--alpha", "-1"])
    assert "--labelled-share" in user_error(capsys, base + ["--labelled-share", "1.5"])
    assert not (tmp_path / "never").exists()
    png = str(tmp_path / "s.png")
    assert "--label must be a class in [0, 10)" in user_error(capsys, ["sample", str(m2_run), "--label", "10",
                                                                        "--out", png])
    assert "--label must be a class" in user_error(capsys, ["sample", str(m2_run), "--label", "-1", "--out", png])
    assert "--style-of takes indices" in user_error(capsys, ["sample", str(m2_run), "--style-of", "100000",
                                                             "--out", png])
    assert "--out must name a .npz" in user_error(capsys, ["encode", str(m2_run), "--out", str(tmp_path / "c.csv")])
    assert not (tmp_path / "s.png").exists()


def test_posterior_codes_are_drawn_afresh_for_training(m1_run, tmp_path, capsys):
    """``encode --what posterior`` writes each code's mean and sd; as a dataset, its training rows
    are new draws of N(mean, sd^2) every time, validation and test one fixed draw."""
    codes = tmp_path / "post.npz"
    run, digits = _encoded(m1_run, codes, "--what", "posterior")
    x_test = digits.observations("test")
    loc, scale = run.pair.guide.eval().loc_scale(x_test)
    with np.load(codes) as f:
        test = f["split"] == "test"
        np.testing.assert_allclose(f["x"][test], loc.detach().numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(f["x_sd"][test], scale.detach().numpy(), rtol=1e-5, atol=1e-6)
        mean_train, sd_train = f["x"][f["split"] == "train"], f["x_sd"][f["split"] == "train"]
        arrays = {k: f[k] for k in f.files}
    d = data_mod.load(str(codes), likelihood="gaussian")
    rows = torch.arange(200)
    first, second = d.batch("train", rows)[0], d.batch("train", rows)[0]
    assert not torch.equal(first, second)
    z = (torch.cat([first, second]) - torch.from_numpy(mean_train[:200]).repeat(2, 1)) / torch.from_numpy(
        sd_train[:200]).repeat(2, 1)
    assert abs(z.mean().item()) < 0.1 and abs(z.std().item() - 1) < 0.1  # standard normal residuals
    again = data_mod.load(str(codes), likelihood="gaussian")
    assert torch.equal(d.observations("test"), again.observations("test"))  # one fixed draw
    assert not torch.equal(d.observations("test"), torch.from_numpy(arrays["x"][test]))
    bad = tmp_path / "bad.npz"
    np.savez(bad, **{**arrays, "x_sd": -arrays["x_sd"]})
    assert "'x_sd'" in user_error(capsys, ["train", "--dataset", str(bad), "--likelihood", "gaussian",
                                           "--out", str(tmp_path / "never"), "--quiet"])
