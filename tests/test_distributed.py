"""Data-parallel training with torch.distributed, on CPU with gloo and 2 processes spawned here:
one distributed step is one single-process step on the concatenated batch; a distributed run and
its resumption end with the same state on every rank, bit for bit that of an uninterrupted run;
a rank that dies or hangs ends the job with a non-zero exit code and a message, never a hang."""

import copy
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyro
import pytest
import torch
import torch.multiprocessing as mp

from cli_errors import user_error
from pyro_vae import distributed, objectives
from pyro_vae.cli import main
from pyro_vae.config import RunConfig
from pyro_vae.errors import PyroVAEError
from pyro_vae.run import BEST, LAST, build, load_run
from pyro_vae.train import fit

WORLD = 2
REPO = Path(__file__).resolve().parents[1]  # subprocesses import the package beside these tests
TINY = ["--dataset", "digits", "--hidden", "32", "--latent-dim", "2", "--batch-size", "64", "--device", "cpu",
        "--quiet"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank: int, port: int, **extra) -> dict:
    """What torchrun would set for ``rank`` of a one-node job of WORLD processes."""
    return {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(WORLD), "OMP_NUM_THREADS": "1", **extra}


def _start_worker(rank: int, port: int) -> None:
    os.environ.update(rank_env(rank, port))
    torch.set_num_threads(1)


def _leave() -> None:
    """End a worker that did all its work without interpreter finalization: in about 1 of 30
    runs here torch aborted a rank during it (SIGABRT, "terminate called without an active
    exception"), after destroy_process_group, which is not what these tests examine."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# One step, both ways. Each case: guide, objective, particles. The guide's standard-normal noise is
# a fixed table: the single process draws all of it, rank r exactly its rows of the batch, so the
# two computations see the same z for the same x and must give the same gradient.
STEP_CASES = [("diag", "elbo", 1), ("iaf", "iwae", 3)]
ROWS, OBS, LATENT = 8, 10, 3


def _one_step_worker(rank: int, port: int) -> None:
    _start_worker(rank, port)
    gen = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.rand(WORLD * ROWS, OBS, generator=gen, dtype=torch.float64), generator=gen)
    mine = slice(rank * ROWS, (rank + 1) * ROWS)
    beta = torch.tensor(0.7, dtype=torch.float64)
    noise = {}

    def table_normal(shape, dtype, device):
        assert tuple(shape) == tuple(noise["eps"].shape), (shape, noise["eps"].shape)
        return noise["eps"].to(dtype=dtype, device=device)

    torch.distributions.normal._standard_normal = table_normal
    with distributed.session("cpu", True) as ctx:
        for guide, objective, particles in STEP_CASES:
            shape = (particles,) * (particles > 1) + (WORLD * ROWS, LATENT)
            eps = torch.randn(shape, generator=gen, dtype=torch.float64)
            config = RunConfig(guide=guide, guide_options={"flows": 2, "flow_hidden": [8]} if guide == "iaf" else {},
                               likelihood="bernoulli", hidden=[16], latent_dim=LATENT)
            pyro.set_rng_seed(0)
            single = build(config, (OBS,)).to(torch.float64)
            pair = copy.deepcopy(single)

            noise["eps"] = eps
            optimizer = torch.optim.Adam(single.parameters(), lr=0.01)
            value = objectives.loss_fn(objective, single.model, single.guide, particles)(x, beta) / x.shape[0]
            value.backward()
            optimizer.step()

            noise["eps"] = eps[..., mine, :]
            loss = ctx.wrap(objectives.loss_fn(objective, pair.model, pair.guide, particles), objective)
            optimizer = torch.optim.Adam(pair.parameters(), lr=0.01)
            local = loss(x[mine], beta) / ROWS  # as train.fit divides each rank's sum
            total, seen = ctx.loss_sum(local, ROWS)
            local.backward()
            optimizer.step()

            assert seen == WORLD * ROWS
            assert total == pytest.approx(value.item() * WORLD * ROWS, rel=1e-12)
            # Adam's first step hardly depends on the gradient's scale: compare the gradients too
            for (name, a), b in zip(single.named_parameters(), pair.parameters()):
                torch.testing.assert_close(b.grad, a.grad, rtol=1e-9, atol=1e-12, msg=f"{guide} {name} grad")
                torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12, msg=f"{guide} {name}")
    _leave()


def test_one_distributed_step_is_one_step_on_the_concatenated_batch():
    mp.spawn(_one_step_worker, args=(free_port(),), nprocs=WORLD)


def _runs_worker(rank: int, ports: list, root: str) -> None:
    _start_worker(rank, ports[0])
    short, straight = str(Path(root) / "short"), str(Path(root) / "straight")
    plan = [["train", *TINY, "--epochs", "2", "--out", short, "--distributed"],
            ["train", "--resume", "--out", short, "--epochs", "3", "--quiet", "--distributed"],
            ["train", *TINY, "--epochs", "3", "--out", straight, "--distributed"]]
    for port, argv in zip(ports, plan):
        os.environ["MASTER_PORT"] = str(port)
        assert main(argv) == 0, argv
        if rank == 0 and argv is plan[0]:  # the 2-epoch checkpoint, before the resumed run replaces it
            shutil.copy(Path(short) / LAST, Path(root) / "short-epoch2.pt")
    _leave()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    mp.spawn(_runs_worker, args=([free_port() for _ in range(3)], str(root)), nprocs=WORLD)
    return root


def agreed_digest(payload: dict) -> str:
    """The state digest every rank reported when the checkpoint was saved, checked against the
    checkpoint's own state."""
    ranks = payload["distributed"]
    assert ranks["world_size"] == WORLD and ranks["backend"] == "gloo"
    assert len(ranks["state_sha256"]) == WORLD and len(set(ranks["state_sha256"])) == 1, ranks
    digest = distributed.checkpoint_digest(payload["pair"], payload["optimizer"], payload["train_state"])
    assert digest == ranks["state_sha256"][0]
    return ranks["state_sha256"][0]


def timeless(records):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def test_short_and_resumed_runs_end_identical_on_every_rank(runs):
    short = torch.load(runs / "short-epoch2.pt", weights_only=True)
    assert short["train_state"]["epoch"] == 2
    agreed_digest(short)
    resumed, straight = load_run(runs / "short", which=LAST), load_run(runs / "straight", which=LAST)
    assert resumed.train_state.epoch == straight.train_state.epoch == 3
    # resuming needs no saved RNG state: an epoch's randomness derives from (seed, epoch, rank)
    assert agreed_digest(resumed.payload) == agreed_digest(straight.payload)
    assert timeless(resumed.train_state.history) == timeless(straight.train_state.history)
    agreed_digest(load_run(runs / "short", which=BEST).payload)
    config = json.loads((runs / "short" / "config.json").read_text())
    assert config["distributed"] is True and config["world_size"] == WORLD
    # 1258 training rows: 629 per rank, 9 steps of 64 per rank and epoch
    assert [r["step"] for r in resumed.train_state.history] == [9, 18, 27]
    assert all(r["valid_elbo"] < 0 for r in resumed.train_state.history)
    assert (runs / "short" / "samples.png").is_file()
    assert not [p.name for p in (runs / "short").iterdir() if p.name.endswith(".tmp")]


def test_resume_must_be_launched_like_the_run(capsys, runs):
    message = user_error(capsys, ["train", "--resume", "--out", str(runs / "short"), "--epochs", "4"])
    assert "with --distributed" in message


def test_distributed_outside_torchrun_is_a_one_line_error(capsys, monkeypatch, tmp_path):
    for name in distributed.TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)
    message = user_error(capsys, ["train", *TINY, "--out", str(tmp_path / "run"), "--distributed"])
    assert "torchrun" in message and "RANK" in message
    assert not (tmp_path / "run").exists()


def test_several_processes_without_distributed_is_an_error(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert "add --distributed" in user_error(capsys, ["train", *TINY, "--out", str(tmp_path / "run")])


def test_elbo_jit_is_refused_before_anything_is_written(monkeypatch, tmp_path):
    for key, value in {**rank_env(0, free_port()), "WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(key, value)
    config = RunConfig(dataset="digits", hidden=[16], latent_dim=2, objective="elbo-jit", device="cpu",
                       distributed=True, out=str(tmp_path / "run"))
    with pytest.raises(PyroVAEError, match="rank 0: --objective elbo-jit cannot run with --distributed"):
        fit(config, progress=False)
    assert not (tmp_path / "run").exists()
    assert not torch.distributed.is_initialized()


def test_each_rank_and_epoch_draws_its_own_noise():
    def first_draws(rank, epoch):
        distributed.Group(torch.device("cpu"), rank, WORLD, rank, 10.0).seed_epoch(seed=3, epoch=epoch)
        return torch.rand(4)

    draws = {(rank, epoch): first_draws(rank, epoch) for rank in range(WORLD) for epoch in range(3)}
    assert len({tuple(d.tolist()) for d in draws.values()}) == len(draws)
    assert torch.equal(first_draws(1, 2), draws[1, 2])  # and a resumed epoch draws it again


def test_world_size_belongs_to_distributed_runs():
    with pytest.raises(PyroVAEError, match="world_size"):
        RunConfig(world_size=2).validate()
    RunConfig(distributed=True, world_size=2).validate()


def wait_for(path: Path, procs: list, seconds: float = 60) -> None:
    """Until ``path`` exists (training is under way); fail if a process ended first."""
    deadline = time.monotonic() + seconds
    while not path.exists():
        ended = [p.returncode for p in procs if p.poll() is not None]
        assert not ended and time.monotonic() < deadline, f"no {path.name} (exit codes {ended})"
        time.sleep(0.1)


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds torchrun's workers through /proc")
def test_a_killed_rank_ends_the_torchrun_job(tmp_path):
    out = tmp_path / "run"
    job = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
                            "-m", "pyro_vae", "train", *TINY, "--epochs", "1000", "--out", str(out), "--distributed"],
                           cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(out / "metrics.jsonl", [job])
        rank1 = [pid for pid in children(job.pid) if b"RANK=1\0" in Path(f"/proc/{pid}/environ").read_bytes()]
        assert len(rank1) == 1
        os.kill(rank1[0], signal.SIGKILL)  # as the kernel's OOM killer would
        output, _ = job.communicate(timeout=60)
    finally:
        job.kill()
    assert job.returncode != 0
    assert "SIGKILL" in output and "pyro_vae" in output, output


def test_a_hung_rank_times_out_the_others(tmp_path):
    """No torchrun here to stop the job: the process group's own timeout must end rank 0."""
    out, port, timeout = tmp_path / "run", free_port(), 8
    ranks = [subprocess.Popen([sys.executable, "-m", "pyro_vae", "train", *TINY, "--epochs", "1000", "--out", str(out),
                               "--distributed"],
                              cwd=REPO, env={**os.environ, **rank_env(r, port, PYRO_VAE_DIST_TIMEOUT=str(timeout))},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(WORLD)]
    try:
        wait_for(out / "metrics.jsonl", ranks)
        os.kill(ranks[1].pid, signal.SIGSTOP)
        stopped = time.monotonic()
        _, err = ranks[0].communicate(timeout=timeout + 60)
        waited = time.monotonic() - stopped
    finally:
        for p in ranks:
            p.kill()
            p.wait()
    assert timeout - 1 <= waited < timeout + 30, err
    assert ranks[0].returncode == 2, err
    errors = [line for line in err.splitlines() if line.startswith("pyro-vae: error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert errors[0].startswith("pyro-vae: error: rank 0: lost contact with the other ranks"), err
    assert f"{timeout} s timeout" in errors[0] and "Timed out" in errors[0], err
