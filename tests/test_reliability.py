"""Hostile input at the boundary: one line and exit code 2, nothing half-written, nothing lost."""

from __future__ import annotations

import json

import pytest
import torch

from cli_errors import user_error
from pyro_vae.cli import main
from pyro_vae.config import SEED_MAX


@pytest.mark.parametrize("fields,needle", [
    ({"seed": "abc"}, "seed must be an integer from 0 to 4294967295, got 'abc'"),
    ({"seed": 1.5}, "seed must be an integer from 0 to 4294967295, got 1.5"),
    ({"seed": -1}, "seed must be an integer"),
    ({"seed": SEED_MAX + 1}, "seed must be an integer"),
    ({"seed": True}, "seed must be an integer"),
    ({"dataset": 5}, "dataset must be a string, got 5"),
    ({"guide": ["diag"]}, "guide must be a string"),
    ({"data_dir": 7}, "data_dir must be a string, got 7"),
    ({"prior": None}, "prior must be a string"),
    ({"download": "yes"}, "download must be true or false"),
    ({"lr": True}, "--lr must be a positive finite number, got True"),
    ({"hidden": 5}, "--hidden must be a comma-separated list of positive integers"),
    ({"guide_options": "fast"}, "guide_options must be a mapping of option names to values, got 'fast'"),
    ({"guide": "iaf", "guide_options": {"flow_hidden": ["a"]}}, "--flow-hidden must be positive integers"),
])
def test_config_fields_of_the_wrong_type(tmp_path, capsys, fields, needle):
    config = tmp_path / "c.json"
    config.write_text(json.dumps(fields))
    out = tmp_path / "run"
    assert needle in user_error(capsys, ["train", "--config", str(config), "--epochs", "1", "--out", str(out)])
    assert not out.exists()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("reliability") / "run"
    assert main(["train", "--dataset", "digits", "--hidden", "16", "--epochs", "1", "--quiet", "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("seed", ["-1", str(SEED_MAX + 1), "x"])
@pytest.mark.parametrize("command", ["train", "evaluate", "sample", "diagnose", "encode", "quality", "refit-prior"])
def test_seeds_out_of_range_on_every_command(run, tmp_path, capsys, command, seed):
    extra = {"train": ["--dataset", "digits", "--out", str(tmp_path / "t")],
             "sample": [str(run), "--out", str(tmp_path / "s.png")], "encode": [str(run), "--out", str(tmp_path / "c.npz")],
             "refit-prior": [str(run), "--prior", "gmm", "--out", str(tmp_path / "r")]}.get(command, [str(run)])
    line = user_error(capsys, [command, *extra, f"--seed={seed}"])
    assert "--seed: must be an integer from 0 to 4294967295" in line
    assert not any(tmp_path.iterdir())


def test_sample_onto_a_directory(run, tmp_path, capsys):
    folder = tmp_path / "grid.png"
    folder.mkdir()
    assert "is a directory" in user_error(capsys, ["sample", str(run), "--out", str(folder)])


def test_compare_with_no_guides(capsys):
    assert "--guides names no guide" in user_error(capsys, ["compare", "--guides", ""])
    assert "--guides names no guide" in user_error(capsys, ["compare", "--guides", ",,"])


def test_a_non_finite_bound_is_an_error_and_writes_nothing(run, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    payload = torch.load(run / "checkpoint.pt", weights_only=True)
    key = next(k for k in payload["pair"] if k.startswith("model.decoder") and k.endswith("weight"))
    payload["pair"][key] = torch.full_like(payload["pair"][key], float("nan"))
    torch.save(payload, broken / "checkpoint.pt")
    line = user_error(capsys, ["evaluate", str(broken), "--iw-samples", "5"])
    assert "non-finite" in line and "nothing written" in line
    assert not (broken / "eval.json").exists()


def test_evaluate_prints_its_result_before_it_fails_to_write(run, capsys, monkeypatch):
    import pyro_vae.io as io

    def refuse(path, text):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(io, "write_text_atomic", refuse)
    assert main(["evaluate", str(run), "--iw-samples", "5", "--json"]) == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out)["iw_samples"] == 5  # the result, printed in full
    assert captured.err.strip() == f"pyro-vae: error: could not write {run / 'eval.json'}: Permission denied"


def test_resume_removes_stale_temporary_files(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--dataset", "digits", "--hidden", "16", "--epochs", "1", "--quiet", "--out", str(out)]) == 0
    stale = out / ".last.pt.k1ll3d.tmp"
    stale.write_bytes(b"")  # what a SIGKILL during a checkpoint write leaves
    assert main(["train", "--resume", "--out", str(out), "--epochs", "2", "--quiet"]) == 0
    assert not stale.exists() and not list(out.glob(".*.tmp"))


def test_files_that_are_not_arrays(tmp_path, capsys):
    text = tmp_path / "notes.npz"
    text.write_text("hello world")
    line = user_error(capsys, ["train", "--dataset", str(text), "--epochs", "1", "--out", str(tmp_path / "a")])
    assert "is not a .npz/.npy file of arrays" in line and "allow_pickle" not in line
    import numpy as np

    packed = tmp_path / "packed.npz"
    np.savez_compressed(packed, x=np.random.default_rng(0).random((300, 4)).astype("float32"))
    data = bytearray(packed.read_bytes())
    for i in range(200, 260):  # break the deflate stream and the header inside it
        data[i] ^= 0xFF
    packed.write_bytes(bytes(data))
    line = user_error(capsys, ["train", "--dataset", str(packed), "--likelihood", "gaussian", "--epochs", "1",
                               "--out", str(tmp_path / "b")])
    assert line.startswith(f"pyro-vae: error: cannot read {packed}")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("argv,needle", [
    (["--guides", "diag,iaf", "--flows", "0"], "--flows must be a positive integer"),
    (["--guides", "diag,hamiltonian", "--leapfrog", "-2"], "--leapfrog must be a non-negative integer"),
])
def test_compare_checks_every_guides_options_before_training(tmp_path, capsys, argv, needle):
    out = tmp_path / "cmp"
    assert needle in user_error(capsys, ["compare", *argv, "--epochs", "1", "--out", str(out)])
    assert not (out / "runs").exists()  # not even the first guide was trained


def test_compare_runs_must_be_of_the_guides_they_stand_for(run, tmp_path, capsys):
    line = user_error(capsys, ["compare", "--guides", "iaf", "--runs", str(run), "--out", str(tmp_path / "c")])
    assert f"{run} was trained with --guide diag, not iaf" in line


def test_sizes_too_large_to_allocate(run, tmp_path, capsys):
    line = user_error(capsys, ["train", "--dataset", "digits", "--hidden", "1000000,1000000", "--epochs", "1",
                               "--out", str(tmp_path / "huge")])
    assert line.startswith("pyro-vae: error: out of memory (") and "GiB asked for" in line
    assert "at most 10,000" in user_error(capsys, ["sample", str(run), "-n", "1000000000000",
                                                   "--out", str(tmp_path / "s.png")])
