"""The ``pyro-vae`` command line: every error a user can cause is one line on stderr and exit
code 2, without a traceback and without leaving a run directory behind; a good tiny run writes
everything a run directory promises, and ``evaluate`` and ``sample`` read it back."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from cli_errors import user_error
from pyro_vae import guides, objectives
from pyro_vae.cli import main
from pyro_vae.data import DATASETS

RUN_FILES = ("config.json", "checkpoint.pt", "last.pt", "metrics.jsonl", "elbo_curve.png", "samples.png",
             "reconstructions.png", "latent_scatter.png", "manifold.png")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY = ["--dataset", "digits", "--latent-dim", "2", "--hidden", "32", "--batch-size", "64", "--device", "cpu",
        "--quiet"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, _one_thread):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", *TINY, "--epochs", "2", "--out", str(out)]) == 0
    return out


def npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def grey(*shape):
    return np.random.default_rng(0).random(shape).astype(np.float32)


def with_value(value):
    x = grey(40, 5)
    x[3, 2] = value
    return x


# Each case: (argv after "train", given tmp_path; words the message must contain).
BAD_TRAIN = {
    "unknown dataset": (lambda p: ["--dataset", "cifar"], ["'cifar'", ", ".join(DATASETS)]),
    "unknown guide": (lambda p: ["--guide", "nope"], ["'nope'", ", ".join(guides.GUIDES)]),
    "unknown objective": (lambda p: ["--objective", "kl"], ["'kl'", ", ".join(objectives.OBJECTIVES)]),
    "unknown prior": (lambda p: ["--prior", "laplace"], ["'laplace'"]),
    "unknown likelihood": (lambda p: ["--likelihood", "poisson"], ["'poisson'"]),
    "unknown binarization": (lambda p: ["--binarize", "sometimes"], ["sometimes"]),
    "missing data file": (lambda p: ["--dataset", str(p / "absent.npz")], ["not found", "absent.npz"]),
    "grey digits, bernoulli, no binarization": (
        lambda p: ["--likelihood", "bernoulli", "--binarize", "none"], ["not binary"]),
    "grey file, bernoulli, no binarization": (
        lambda p: ["--dataset", npz(p / "grey.npz", x=grey(40, 5)), "--likelihood", "bernoulli", "--binarize", "none"],
        ["not binary"]),
    "NaN in the data": (lambda p: ["--dataset", npz(p / "nan.npz", x=with_value(np.nan))], ["NaN or Inf"]),
    "Inf in the data": (lambda p: ["--dataset", npz(p / "inf.npz", x=with_value(np.inf))], ["NaN or Inf"]),
    "npz without x": (lambda p: ["--dataset", npz(p / "nox.npz", images=grey(40, 5))], ["no array 'x'", "images"]),
    "latent dim 0": (lambda p: ["--latent-dim", "0"], ["--latent-dim", "positive"]),
    "batch size -1": (lambda p: ["--batch-size", "-1"], ["--batch-size", "positive"]),
    "epochs 0": (lambda p: ["--epochs", "0"], ["--epochs", "positive"]),
    "hidden 0,5": (lambda p: ["--hidden", "0,5"], ["--hidden"]),
    "hidden not integers": (lambda p: ["--hidden", "a,b"], ["--hidden"]),
    "particles 0": (lambda p: ["--particles", "0"], ["--particles"]),
    "negative lr": (lambda p: ["--lr", "-0.1"], ["--lr"]),
    "NaN beta": (lambda p: ["--beta", "nan"], ["--beta"]),
    "negative warm-up": (lambda p: ["--warmup-epochs", "-1"], ["--warmup-epochs"]),
    "unknown flag": (lambda p: ["--frobnicate", "2"], ["unrecognized arguments", "--frobnicate"]),
    "config file missing": (lambda p: ["--config", str(p / "absent.json")], ["config file not found"]),
    "config file not JSON": (lambda p: ["--config", _write(p / "c.json", "{epochs: 2")], ["not valid JSON"]),
    "config file unknown key": (lambda p: ["--config", _write(p / "c.json", '{"latent": 2}')], ["unknown config keys"]),
}


def _write(path, text):
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("case", BAD_TRAIN)
def test_train_user_errors(capsys, tmp_path, monkeypatch, case):
    make, words = BAD_TRAIN[case]
    monkeypatch.chdir(tmp_path)
    args = make(tmp_path)
    out = tmp_path / "run"
    before = sorted(tmp_path.iterdir())
    line = user_error(capsys, ["train", *TINY, "--epochs", "1", *args, "--out", str(out)])
    for word in words:
        assert word in line
    assert not out.exists()
    assert sorted(tmp_path.iterdir()) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_train_cuda_without_gpu(capsys, tmp_path):
    line = user_error(capsys, ["train", *TINY, "--device", "cuda", "--out", str(tmp_path / "run")])
    assert "cuda" in line.lower()
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
@pytest.mark.parametrize("command", ["evaluate", "sample"])
def test_read_commands_cuda_without_gpu(capsys, tmp_path, trained_run, command):
    extra = ["--out", str(tmp_path / "s.png")] if command == "sample" else []
    line = user_error(capsys, [command, str(trained_run), "--device", "cuda", *extra])
    assert "cuda" in line.lower()
    assert list(tmp_path.iterdir()) == []


def test_diverged_training_is_a_one_line_error(capsys, tmp_path, monkeypatch):
    real_loss_fn = objectives.loss_fn

    def nan_loss_fn(*args, **kwargs):
        loss = real_loss_fn(*args, **kwargs)
        return lambda x, beta: loss(x, beta) * torch.nan

    monkeypatch.setattr(objectives, "loss_fn", nan_loss_fn)
    out = tmp_path / "run"
    line = user_error(capsys, ["train", *TINY, "--epochs", "2", "--out", str(out)])
    assert "diverged" in line and str(out) in line
    # The checkpoints of epoch 0 were written before the first step and are kept.
    assert (out / "last.pt").is_file() and (out / "checkpoint.pt").is_file()


def test_existing_run_directory_without_resume(capsys, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    line = user_error(capsys, ["train", *TINY, "--epochs", "1", "--out", str(out)])
    assert "already exists" in line and "--resume" in line
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "mine\n"


@pytest.mark.parametrize("make_dir", [True, False], ids=["empty directory", "no directory"])
def test_resume_without_a_run(capsys, tmp_path, make_dir):
    out = tmp_path / "run"
    if make_dir:
        out.mkdir()
    line = user_error(capsys, ["train", "--resume", "--quiet", "--out", str(out)])
    assert "no checkpoint" in line
    assert out.exists() == make_dir
    if make_dir:
        assert list(out.iterdir()) == []


def test_resume_refuses_config_changes(capsys, trained_run):
    line = user_error(capsys, ["train", "--resume", "--latent-dim", "3", "--out", str(trained_run)])
    assert "--latent-dim" in line


def test_no_command(capsys):
    user_error(capsys, [])


@pytest.mark.parametrize("argv", [
    ["evaluate", "RUN", "--iw-samples", "0"],
    ["evaluate", "RUN", "--iw-samples", "-3"],
    ["evaluate", "RUN", "--batch-size", "0"],
    ["evaluate", "RUN", "--bogus"],
    ["evaluate", "RUN", "--split", "holdout"],
    ["sample", "RUN", "-n", "0", "--out", "OUT/s.png"],
    ["sample", "RUN", "-n", "4", "--out", "OUT/s.jpg"],
    ["sample", "RUN", "-n", "4"],
], ids=lambda argv: " ".join(argv[2:]))
def test_read_commands_bad_arguments(capsys, tmp_path, trained_run, argv):
    before = sorted(p.name for p in trained_run.iterdir())
    argv = [str(trained_run) if a == "RUN" else a.replace("OUT", str(tmp_path)) for a in argv]
    user_error(capsys, argv)
    assert sorted(p.name for p in trained_run.iterdir()) == before
    assert list(tmp_path.iterdir()) == []


def _corrupt(run_dir):
    blob = (run_dir / "checkpoint.pt").read_bytes()
    (run_dir / "checkpoint.pt").write_bytes(blob[: len(blob) // 2])


def _foreign(run_dir):
    torch.save({"state_dict": {"weight": torch.zeros(3)}, "epoch": 7}, run_dir / "checkpoint.pt")


def _empty(run_dir):
    (run_dir / "checkpoint.pt").write_bytes(b"")


def _missing(run_dir):
    (run_dir / "checkpoint.pt").unlink()


@pytest.mark.parametrize("damage", [_corrupt, _foreign, _empty, _missing],
                         ids=["truncated", "foreign", "empty", "missing"])
@pytest.mark.parametrize("command", ["evaluate", "sample"])
def test_unusable_checkpoint(capsys, tmp_path, trained_run, command, damage):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "eval.json").unlink(missing_ok=True)
    damage(run)
    png = tmp_path / "s.png"
    argv = [command, str(run), "--device", "cpu"] + (["--out", str(png)] if command == "sample" else ["--iw-samples", "2"])
    line = user_error(capsys, argv)
    assert "checkpoint" in line
    assert not (run / "eval.json").exists()
    assert not png.exists()


@pytest.mark.parametrize("command", ["evaluate", "sample"])
def test_missing_run_directory(capsys, tmp_path, command):
    extra = ["--out", str(tmp_path / "s.png")] if command == "sample" else []
    line = user_error(capsys, [command, str(tmp_path / "nothing"), *extra])
    assert "not found" in line
    assert list(tmp_path.iterdir()) == []


# --- the real entry point -------------------------------------------------------------------------

def run_module(args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "pyro_vae", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_entry_point_unknown_objective(tmp_path):
    result = run_module(["train", "--objective", "nope", "--quiet", "--out", "run"], tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyro-vae: error: unknown objective 'nope'")
    assert list(tmp_path.iterdir()) == []


def test_entry_point_truncated_checkpoint(tmp_path, trained_run):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    _corrupt(run)
    result = run_module(["evaluate", "run", "--iw-samples", "2", "--device", "cpu"], tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyro-vae: error: ") and "checkpoint" in lines[0]


# --- a good tiny run ------------------------------------------------------------------------------

def test_train_writes_the_run_directory(trained_run):
    for name in RUN_FILES:
        assert (trained_run / name).is_file(), name
        assert (trained_run / name).stat().st_size > 0, name
    for name in RUN_FILES:
        if name.endswith(".png"):
            assert (trained_run / name).read_bytes()[:8] == PNG_MAGIC, name
    lines = (trained_run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    history = [json.loads(line) for line in lines]
    assert [h["epoch"] for h in history] == [1, 2]
    for h in history:
        assert {"epoch", "step", "train_objective", "beta", "valid_elbo"} <= set(h)
        assert h["valid_elbo"] < 0
    config = json.loads((trained_run / "config.json").read_text())
    assert config["latent_dim"] == 2 and config["hidden"] == [32] and config["epochs"] == 2
    # Defaults resolved from the dataset are stored, so the run can be rebuilt without the registry's
    # defaults ever changing its meaning.
    assert config["likelihood"] == "bernoulli" and config["binarize"] == "dynamic"
    # Atomic writes leave no temporary files behind.
    assert not [p.name for p in trained_run.iterdir() if p.name.endswith(".tmp")]


def test_evaluate_json(capsys, trained_run):
    assert main(["evaluate", str(trained_run), "--iw-samples", "50", "--json", "--device", "cpu"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    result = json.loads(out[0])
    assert {"elbo", "nll", "nll_se", "iw_samples", "active_units", "latent_dim", "n"} <= set(result)
    assert result["iw_samples"] == 50 and result["latent_dim"] == 2
    assert result["n"] > 0
    assert 0 <= result["active_units"] <= 2
    assert result["elbo"] < 0
    assert result["nll_se"] > 0
    # The K-sample estimate log mean w >= mean log w on the same weights (Jensen), so -nll >= elbo.
    assert result["elbo"] <= -result["nll"] + 1e-3
    assert json.loads((trained_run / "eval.json").read_text()) == result


def test_evaluate_text_report(capsys, trained_run):
    assert main(["evaluate", str(trained_run), "--iw-samples", "5", "--split", "valid", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "NLL (K=5)" in out and "active units" in out
    assert json.loads((trained_run / "eval-valid.json").read_text())["split"] == "valid"


def test_sample_writes_png(capsys, tmp_path, trained_run):
    png = tmp_path / "x.png"
    assert main(["sample", str(trained_run), "-n", "16", "--out", str(png), "--device", "cpu"]) == 0
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert str(png) in capsys.readouterr().out


def test_config_file_is_read_and_flags_override_it(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"dataset": "digits", "latent_dim": 3, "hidden": [16], "epochs": 5,
                                  "batch_size": 64, "seed": 7, "out": str(tmp_path / "ignored")}))
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--epochs", "1", "--latent-dim", "2", "--device", "cpu",
                 "--quiet", "--out", str(out)]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["epochs"] == 1 and saved["latent_dim"] == 2  # flags win
    assert saved["hidden"] == [16] and saved["batch_size"] == 64 and saved["seed"] == 7  # the file's values
    assert saved["out"] == str(out)
    assert not (tmp_path / "ignored").exists()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


def test_guides_lists_diag(capsys):
    assert main(["guides"]) == 0
    out = capsys.readouterr().out
    # A guide's name starts its line; indented lines under it describe its options.
    names = [line.split()[0] for line in out.strip().splitlines() if not line[:1].isspace()]
    assert "diag" in names
    assert names == list(guides.GUIDES)
