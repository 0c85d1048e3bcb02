"""The training loop: it learns, the JIT objective matches the plain one, a resumed run is the
same run bit for bit, a diverging run stops and keeps its last good checkpoints, and KL warm-up
follows its schedule."""

import dataclasses
import json
from pathlib import Path

import pyro
import pytest
import torch

from pyro_vae import objectives, train
from pyro_vae.config import RunConfig
from pyro_vae.data import load
from pyro_vae.errors import PyroVAEError, TrainingDiverged
from pyro_vae.run import BEST, LAST, build, load_run
from pyro_vae.train import fit, kl_weight

DIGITS_TRAIN = 1258  # rows of the digits train split
BATCH = 64
STEPS_PER_EPOCH = DIGITS_TRAIN // BATCH


@pytest.fixture
def tiny(tmp_path, device):
    def make(name: str, **changes) -> RunConfig:
        base = dict(dataset="digits", hidden=[32], latent_dim=4, batch_size=BATCH, epochs=3, lr=3e-3, seed=0,
                    device=device.type, out=str(tmp_path / name))
        return RunConfig(**{**base, **changes})
    return make


def history(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def timeless(records):
    """Metric records without their wall-clock seconds, the one field a rerun may change."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def test_training_raises_the_validation_elbo(tiny):
    run = fit(tiny("learn", epochs=5), progress=False)
    records = history(run)
    assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5]
    assert [r["step"] for r in records] == [STEPS_PER_EPOCH * e for e in range(1, 6)]
    first, last = records[0]["valid_elbo"], records[-1]["valid_elbo"]
    assert last > first + 1.0, (first, last)
    assert all(r["valid_elbo"] < 0 for r in records)
    # checkpoint.pt holds the best epoch by validation ELBO, last.pt the final one.
    best = max(records, key=lambda r: r["valid_elbo"])
    assert load_run(run, which=BEST).train_state.epoch == best["epoch"]
    assert load_run(run, which=LAST).train_state.epoch == 5


def test_elbo_and_elbo_jit_agree(tiny):
    plain = history(fit(tiny("plain", objective="elbo"), progress=False))
    jit = history(fit(tiny("jit", objective="elbo-jit"), progress=False))
    assert len(plain) == len(jit) == 3
    for a, b in zip(plain, jit):
        assert b["train_objective"] == pytest.approx(a["train_objective"], rel=1e-4)
        assert b["valid_elbo"] == pytest.approx(a["valid_elbo"], rel=1e-4)


def test_elbo_jit_gradients_equal_elbo_gradients(tiny, device):
    # Adam is almost blind to a constant factor on every gradient, so equal training curves alone
    # would not reveal a compiled loss whose gradients are scaled; compare them directly.
    config = tiny("grad", likelihood="bernoulli")
    data = load("digits")
    torch.manual_seed(0)
    pair = build(config, data.obs_shape).to(device=device, dtype=torch.float64)
    x = data.observations("valid", device)[:BATCH].to(torch.float64)
    beta = torch.ones((), device=device, dtype=torch.float64)
    results = {}
    for name in ("elbo", "elbo-jit"):
        loss = objectives.loss_fn(name, pair.model, pair.guide)
        for _ in range(2):  # the JIT compiles on its first call; the second runs the compiled graph
            pyro.set_rng_seed(1)
            pair.zero_grad(set_to_none=True)
            value = loss(x, beta)
            value.backward()
        results[name] = value.item(), {k: p.grad.clone() for k, p in pair.named_parameters()}
    (plain, plain_grads), (jit, jit_grads) = results["elbo"], results["elbo-jit"]
    assert jit == pytest.approx(plain, rel=1e-10)
    assert plain_grads.keys() == jit_grads.keys()
    for key in plain_grads:
        torch.testing.assert_close(jit_grads[key], plain_grads[key], rtol=1e-8, atol=1e-10, msg=key)


@pytest.mark.parametrize("objective", ["elbo", "elbo-jit"])
def test_resume_continues_bit_for_bit(tiny, objective):
    straight = fit(tiny("straight", objective=objective, epochs=4), progress=False)
    config = tiny("resumed", objective=objective, epochs=2)
    fit(config, progress=False)
    assert len(history(Path(config.out))) == 2
    resumed = fit(dataclasses.replace(config), resume=True, epochs=4, progress=False)

    assert timeless(history(resumed)) == timeless(history(straight))
    for which in (BEST, LAST):
        a, b = load_run(straight, which=which), load_run(resumed, which=which)
        assert a.train_state.epoch == b.train_state.epoch
        assert timeless(a.train_state.history) == timeless(b.train_state.history)
        state_a, state_b = a.pair.state_dict(), b.pair.state_dict()
        assert state_a.keys() == state_b.keys()
        for key in state_a:
            assert torch.equal(state_a[key], state_b[key]), key
    # The optimizer moments continue too, or the next resumed epoch would drift.
    moments_a = load_run(straight, which=LAST).payload["optimizer"]["state"]
    moments_b = load_run(resumed, which=LAST).payload["optimizer"]["state"]
    for key in moments_a:
        for name, value in moments_a[key].items():
            assert torch.equal(value, moments_b[key][name]), (key, name)


def test_resume_needs_a_run(tiny):
    with pytest.raises(PyroVAEError, match="no checkpoint"):
        fit(tiny("never"), resume=True, progress=False)


def test_existing_run_is_not_overwritten(tiny):
    config = tiny("once", epochs=1)
    fit(config, progress=False)
    before = (Path(config.out) / LAST).read_bytes()
    with pytest.raises(PyroVAEError, match="already exists"):
        fit(config, progress=False)
    assert (Path(config.out) / LAST).read_bytes() == before


def test_divergence_stops_and_keeps_the_last_good_checkpoints(tiny, monkeypatch):
    good_epochs, bad_step = 2, 3
    nan_at = 1 + good_epochs * STEPS_PER_EPOCH + bad_step  # call 1 is the validated priming call
    config = tiny("diverge", epochs=5)
    run_dir = Path(config.out)
    snapshot = {}
    real_loss_fn = objectives.loss_fn

    def loss_fn(*args, **kwargs):
        loss = real_loss_fn(*args, **kwargs)
        calls = 0

        def poisoned(x, beta):
            nonlocal calls
            calls += 1
            value = loss(x, beta)
            if calls == nan_at:
                snapshot.update({name: (run_dir / name).read_bytes() for name in (BEST, LAST, "metrics.jsonl")})
                return value * torch.nan
            return value
        return poisoned

    monkeypatch.setattr(objectives, "loss_fn", loss_fn)
    with pytest.raises(TrainingDiverged) as err:
        fit(config, progress=False)
    message = str(err.value)
    assert "diverged" in message and "nan" in message.lower()
    assert f"epoch {good_epochs + 1}" in message and str(run_dir) in message
    assert isinstance(err.value, PyroVAEError)  # so the CLI reports it as one line, exit 2

    assert snapshot, "the poisoned step was never reached"
    for name, blob in snapshot.items():
        assert (run_dir / name).read_bytes() == blob, f"{name} changed after the loss became NaN"
    assert not [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")]
    last = load_run(run_dir, which=LAST)
    assert last.train_state.epoch == good_epochs
    assert len(last.train_state.history) == good_epochs
    assert all(torch.isfinite(p).all() for p in last.pair.parameters())
    assert load_run(run_dir, which=BEST).train_state.epoch <= good_epochs


def test_nan_validation_elbo_stops_and_keeps_the_last_good_checkpoints(tiny, monkeypatch):
    config = tiny("valid-nan", epochs=4)
    run_dir = Path(config.out)
    snapshot = {}
    real = train.validation_elbo
    calls = 0

    def validation_elbo(pair, x, *args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == 2:
            snapshot.update({name: (run_dir / name).read_bytes() for name in (BEST, LAST, "metrics.jsonl")})
            return float("nan")
        return real(pair, x, *args, **kwargs)

    monkeypatch.setattr(train, "validation_elbo", validation_elbo)
    with pytest.raises(TrainingDiverged, match="validation ELBO is nan after epoch 2"):
        fit(config, progress=False)
    for name, blob in snapshot.items():
        assert (run_dir / name).read_bytes() == blob, f"{name} changed after the validation ELBO became NaN"
    assert load_run(run_dir, which=LAST).train_state.epoch == 1
    assert len(history(run_dir)) == 1


def test_huge_learning_rate_diverges_or_stays_finite(tiny):
    # An absurd step size must end either in TrainingDiverged or in finite numbers: never in a
    # NaN written to the metrics or the checkpoints.
    config = tiny("wild", lr=1e6, epochs=2)
    try:
        fit(config, progress=False)
    except TrainingDiverged:
        pass
    run_dir = Path(config.out)
    records = history(run_dir) if (run_dir / "metrics.jsonl").exists() else []
    for r in records:
        assert all(v == v and abs(v) != float("inf") for v in r.values()), r
    last = load_run(run_dir, which=LAST)
    assert all(torch.isfinite(p).all() for p in last.pair.parameters())


@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_kl_warmup_is_linear_up_to_beta(tiny, beta):
    warmup = 3
    config = tiny(f"warm{beta}", beta=beta, warmup_epochs=warmup, epochs=5)
    records = history(fit(config, progress=False))
    # Each record holds the weight of its epoch's last step, (step / warm-up steps) * beta.
    expected = [beta * min(1.0, e / warmup) for e in range(1, 6)]
    assert [r["beta"] for r in records] == pytest.approx(expected, rel=1e-12)

    weights = [kl_weight(config, step, STEPS_PER_EPOCH) for step in range(7 * STEPS_PER_EPOCH)]
    ramp = warmup * STEPS_PER_EPOCH
    assert weights[0] > 0  # a zero scale is invalid in Pyro
    assert weights[:ramp] == pytest.approx([beta * (s + 1) / ramp for s in range(ramp)], rel=1e-12)
    assert all(w == beta for w in weights[ramp:])


def test_no_warmup_means_constant_beta(tiny):
    config = tiny("nowarm", beta=0.25, epochs=2)
    assert {kl_weight(config, s, STEPS_PER_EPOCH) for s in range(50)} == {0.25}
    assert [r["beta"] for r in history(fit(config, progress=False))] == [0.25, 0.25]
