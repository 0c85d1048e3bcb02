"""Hostile input at the boundary: one line and exit code 2, nothing half-written, nothing lost."""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cli_errors import user_error
from pyro_vae import rundir
from pyro_vae.cli import main
from pyro_vae.config import SEED_MAX
from pyro_vae.errors import PyroVAEError
from pyro_vae.run import BEST, LAST, load_checkpoint, load_run

REPO = Path(__file__).resolve().parents[1]  # subprocesses import the package beside these tests
SMALL = ["--dataset", "digits", "--hidden", "16", "--latent-dim", "2", "--batch-size", "200", "--device", "cpu",
         "--quiet"]
RUN_FILES = ("config.json", "checkpoint.pt", "last.pt", "metrics.jsonl", "elbo_curve.png", "samples.png")


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


# --- one writer per run directory ----------------------------------------------------------------

def start(argv, entry=("-m", "pyro_vae")) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *entry, *argv], cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def assert_complete(run: Path, epochs: int) -> None:
    for name in RUN_FILES:
        assert (run / name).is_file(), name
    assert not list(run.glob(".*"))  # no lock, no temporary file
    last = load_run(run, which=LAST)
    assert last.train_state.epoch == epochs and load_run(run).train_state.epoch <= epochs
    assert json.loads((run / "config.json").read_text()) == last.payload["config"]
    assert len((run / "metrics.jsonl").read_text().splitlines()) == epochs


def test_two_runs_started_together_on_one_out(tmp_path):
    out = tmp_path / "run"
    procs = [start(["train", *SMALL, "--epochs", "2", "--out", str(out)]) for _ in range(2)]
    results = [(p.communicate(timeout=300), p.returncode) for p in procs]
    results = [(code, out_, err) for (out_, err), code in results]
    assert sorted(code for code, _, _ in results) == [0, 2], results
    (_, won, _), = [r for r in results if r[0] == 0]
    (_, _, lost), = [r for r in results if r[0] == 2]
    assert won.strip() == f"trained: {out}"
    lines = lost.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in lost, lost
    # refused while the other trains, or after it finished, when the directory is no longer empty
    assert ("is being written by another process" in lines[0] or "already exists" in lines[0]), lines[0]
    assert_complete(out, 2)


def test_a_claim_is_exclusive_and_leaves_no_trace(tmp_path):
    out = tmp_path / "new" / "run"
    with rundir.claim(out, fresh=True):
        assert (out / rundir.LOCK).read_text().strip() == str(os.getpid())
        for fresh in (True, False):
            busy = f"{out} is being written by another process (pid {os.getpid()})"
            with pytest.raises(PyroVAEError, match=re.escape(busy)):
                with rundir.claim(out, fresh=fresh):
                    pass
        assert (out / rundir.LOCK).exists()  # the refused claims took nothing from the holder
    assert not (tmp_path / "new").exists()  # nothing written: the directories made for the run are gone
    out.mkdir(parents=True)
    (out / "notes.txt").write_text("mine\n")
    with pytest.raises(PyroVAEError, match="already exists and is not empty"):
        with rundir.claim(out, fresh=True):
            pass
    assert snapshot(out) == {"notes.txt": b"mine\n"}


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    code = ("import os, signal, sys; from pyro_vae.rundir import claim; held = claim(sys.argv[1], fresh=False); "
            "held.__enter__(); "
            "os.kill(os.getpid(), signal.SIGKILL)")
    assert subprocess.run([sys.executable, "-c", code, str(out)], cwd=REPO).returncode == -signal.SIGKILL
    assert (out / rundir.LOCK).exists()  # the file stays, the lock went with the process
    with rundir.claim(out, fresh=False):
        pass
    assert not (out / rundir.LOCK).exists()


def test_a_run_directory_in_use_is_refused(run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    before = snapshot(copy)
    with rundir.claim(copy, fresh=False):  # as another process training into it would hold it
        during = snapshot(copy)
        line = user_error(capsys, ["train", "--resume", "--out", str(copy), "--epochs", "2", "--quiet"])
        assert f"run directory {copy} is being written by another process" in line
        assert snapshot(copy) == during
    assert snapshot(copy) == before
    empty = tmp_path / "empty"
    with rundir.claim(empty, fresh=True):
        line = user_error(capsys, ["train", *SMALL, "--epochs", "1", "--out", str(empty)])
        assert "is being written by another process" in line
    assert not empty.exists()


# --- Ctrl-C ---------------------------------------------------------------------------------------

def _console_script() -> tuple:
    """``python -c`` running the ``pyro-vae`` entry point setup.cfg declares, as its script does."""
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    line, = [v for v in setup["options.entry_points"]["console_scripts"].splitlines() if v.strip()]
    module, function = line.split("=")[1].strip().split(":")
    return "-c", f"import sys; from {module} import {function}; sys.exit({function}())"


def assert_interrupted(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (proc.returncode, err)
    assert err == "pyro-vae: interrupted\n", err


@pytest.mark.parametrize("entry", [("-m", "pyro_vae"), "console script"])
def test_ctrl_c_while_importing(tmp_path, entry):
    out = tmp_path / "run"
    proc = start(["train", *SMALL, "--epochs", "2", "--out", str(out)],
                 _console_script() if entry == "console script" else entry)
    time.sleep(0.5)  # torch and Pyro are being imported
    proc.send_signal(signal.SIGINT)
    assert_interrupted(proc)
    assert not out.exists() or not list(out.glob(".*"))


def test_ctrl_c_while_training_keeps_the_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    proc = start(["train", *SMALL, "--epochs", "100000", "--patience", "100000", "--out", str(out)])
    deadline = time.monotonic() + 120
    while not (out / "metrics.jsonl").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    time.sleep(0.5)  # a few epochs on: checkpoints are being replaced
    proc.send_signal(signal.SIGINT)
    assert_interrupted(proc)
    assert not list(out.glob(".*"))  # no temporary file half written, no lock
    last = load_checkpoint(out / LAST)
    load_checkpoint(out / BEST)
    epochs = last.train_state.epoch
    assert epochs >= 1
    assert main(["train", "--resume", "--out", str(out), "--epochs", str(epochs + 1), "--quiet"]) == 0
    assert load_run(out, which=LAST).train_state.epoch == epochs + 1


# --- config.json and --resume -------------------------------------------------------------------

def edit_config(run: Path, **fields) -> None:
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, **fields}, indent=2))


def test_resume_refuses_an_edited_config(run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    original = (copy / "config.json").read_text()
    edit_config(copy, lr=0.002, batch_size=64)
    before = snapshot(copy)
    line = user_error(capsys, ["train", "--resume", "--out", str(copy), "--epochs", "2", "--quiet"])
    assert f"{copy / 'config.json'} differs from the run's checkpoint in " in line
    assert "lr (0.002 there, 0.001 in last.pt)" in line and "batch_size (64 there, 128 in last.pt)" in line
    assert "epochs (" not in line  # --epochs was given: the resumed run's new budget
    assert snapshot(copy) == before  # nothing written, nothing removed
    (copy / "config.json").write_text(original)
    assert main(["train", "--resume", "--out", str(copy), "--epochs", "2", "--quiet"]) == 0
    # config.json and last.pt record the new budget and the directory the run is now in
    saved = json.loads((copy / "config.json").read_text())
    assert saved == load_checkpoint(copy / LAST).payload["config"]
    assert saved["epochs"] == 2 and saved["out"] == str(copy)
    assert main(["train", "--resume", "--out", str(copy), "--quiet"]) == 0  # and agree on the next resume
    assert load_run(copy, which=LAST).train_state.epoch == 2  # which keeps the run's budget


def test_resume_takes_no_config_file(run, tmp_path, capsys):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"epochs": 5}))
    line = user_error(capsys, ["train", "--resume", "--config", str(config), "--out", str(run), "--quiet"])
    assert "(got --config)" in line


def test_resume_refuses_an_edited_budget_without_epochs(run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    edit_config(copy, epochs=3)
    line = user_error(capsys, ["train", "--resume", "--out", str(copy), "--quiet"])
    assert "epochs (3 there, 1 in last.pt)" in line and "give --epochs" in line
    assert main(["train", "--resume", "--out", str(copy), "--epochs", "3", "--quiet"]) == 0
    assert load_run(copy, which=LAST).train_state.epoch == 3


def test_resume_refuses_a_config_that_is_not_json(run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "config.json").write_text("{lr: ")
    assert "not valid JSON" in user_error(capsys, ["train", "--resume", "--out", str(copy), "--quiet"])
