"""Data-parallel training on PyTorch's own engine: torch.distributed, launched by torchrun.

Every process (rank) holds the same model and guide and trains on its own rows of each batch.
Pyro's ``ELBOModule`` (model and guide in one ``nn.Module``) is wrapped in
``DistributedDataParallel``, which averages gradients over ranks. Each rank's loss is its negative
bound summed over its local batch divided by the local batch size, so the averaged gradient is
that of the mean over the global batch (per-rank batch x world size), exactly what one process
would compute on the concatenated batch.

Randomness: ``DistributedSampler`` deals each rank its rows of the training split, shuffled from
the run's seed and the epoch. Everything else random in an epoch (dynamic binarization, the
guide's samples, the validation samples) comes from the global RNGs, reseeded at the start of
every epoch from (seed, epoch, rank): ranks draw different noise, and a resumed run continues bit
for bit without any saved RNG state.

Failure: the process group has a timeout (``$PYRO_VAE_DIST_TIMEOUT`` seconds, default 600) on its
rendezvous and on every collective, so when a rank dies or hangs the others fail with a message
instead of waiting forever, and torchrun stops the job with a non-zero exit code.

:class:`Single` is the one-process counterpart with the same methods: with it, ``train.fit`` runs
exactly as it did before distribution existed.
"""

from __future__ import annotations

import hashlib
import inspect
import os
from contextlib import contextmanager, nullcontext
from datetime import timedelta

import numpy as np
import pyro
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from .errors import PyroVAEError
from .run import resolve_device

TIMEOUT_ENV = "PYRO_VAE_DIST_TIMEOUT"
DEFAULT_TIMEOUT = 600.0
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
_BUFFER_SYNC = "forward_sync_buffers" \
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters else "broadcast_buffers"
_joined = False  # whether this process has joined a process group through session()
LAUNCH = "torchrun --nproc_per_node=N -m pyro_vae train ... --distributed"


def joined() -> bool:
    """Whether this process has been a rank of a process group started by :func:`session`."""
    return _joined


def launched_rank() -> int:
    """This process's rank as set by torchrun, 0 when not launched by it."""
    return int(os.environ.get("RANK", "0") or 0)


def launched_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def timeout_seconds() -> float:
    text = os.environ.get(TIMEOUT_ENV, "")
    try:
        value = float(text) if text else DEFAULT_TIMEOUT
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise PyroVAEError(f"${TIMEOUT_ENV} must be a positive number of seconds, got {text!r}")
    return value


def state_digest(*states) -> str:
    """SHA-256 of nested dicts/lists of tensors and plain values (state dicts), by value."""
    h = hashlib.sha256()

    def feed(obj):
        if isinstance(obj, torch.Tensor):
            t = obj.detach().cpu().contiguous()
            h.update(f"tensor{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(obj, dict):
            for key in sorted(obj, key=repr):
                h.update(repr(key).encode())
                feed(obj[key])
        elif isinstance(obj, (list, tuple)):
            h.update(f"seq{len(obj)}".encode())
            for value in obj:
                feed(value)
        else:
            h.update(repr(obj).encode())

    for state in states:
        feed(state)
    return h.hexdigest()


def checkpoint_digest(pair_state: dict, optimizer_state: dict, train_state: dict) -> str:
    """What every rank certifies in a checkpoint: model, guide, optimizer, position in the loop."""
    position = {key: train_state[key] for key in ("epoch", "step", "best_epoch", "best_valid")}
    return state_digest(pair_state, optimizer_state, position)


class Single:
    """One process, no process group: each method is what single-process training does."""

    rank, world_size, is_main = 0, 1, True

    def __init__(self, device: torch.device):
        self.device = device

    def main_first(self):
        return nullcontext()

    def wrap(self, loss, objective: str):
        return loss

    def seed_epoch(self, seed: int, epoch: int) -> None:
        pass  # the RNG state runs on from epoch to epoch and is saved in every checkpoint

    def steps_per_epoch(self, n: int, batch_size: int) -> int:
        return max(1, n // batch_size)

    def train_batches(self, data, batch_size: int, seed: int, epoch: int):
        """Shuffled full (x, y) batches on this process's device; the last partial one is dropped so
        every step has one shape."""
        n = data.x["train"].shape[0]
        full = n // batch_size if n >= batch_size else 1
        size = min(batch_size, n)
        for i, batch in enumerate(data.batches("train", size, shuffle=True, device=self.device)):
            if i == full:
                break
            yield batch

    def loss_sum(self, value: torch.Tensor, n: int) -> tuple[float, int]:
        """The summed loss of a step over all ranks, and the number of rows it covers."""
        return value.item() * n, n

    def average(self, mean_of, rows: torch.Tensor) -> float:
        """``mean_of(rows)``, a mean over ``rows`` (indices of a split)."""
        return mean_of(rows)

    def barrier(self) -> None:
        pass

    def agreed_state(self, pair_state: dict, optimizer_state: dict, train_state: dict) -> dict:
        """Checkpoint fields certifying that every rank holds this state: none for one process."""
        return {}


class Group(Single):
    """This process's place in a torch.distributed process group of ``world_size`` ranks."""

    def __init__(self, device: torch.device, rank: int, world_size: int, local_rank: int, timeout: float):
        super().__init__(device)
        self.rank, self.world_size, self.local_rank, self.timeout = rank, world_size, local_rank, timeout
        self.is_main = rank == 0

    def barrier(self) -> None:
        # NCCL's barrier otherwise guesses a GPU, which may not be this rank's
        dist.barrier(device_ids=[self.device.index]) if self.device.type == "cuda" else dist.barrier()

    @contextmanager
    def main_first(self):
        """Rank 0 runs the block first (e.g. torchvision extracting MNIST once), then the others."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def wrap(self, loss, objective: str):
        if not isinstance(loss, torch.nn.Module):
            raise PyroVAEError(f"--objective {objective} cannot run with --distributed: its loss reads parameters "
                               "from Pyro's param store, not from a torch module that DistributedDataParallel "
                               "can wrap; use --objective elbo (the same bound)")
        # The buffers (permutations, the prior's constants) never change, so they need no
        # broadcast before every forward pass (the keyword was renamed in newer torch).
        no_sync = {_BUFFER_SYNC: False}
        return DistributedDataParallel(loss, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                                       **no_sync)

    def seed_epoch(self, seed: int, epoch: int) -> None:
        derived = np.random.SeedSequence([seed % 2**64, epoch, self.rank]).generate_state(1)[0]
        pyro.set_rng_seed(int(derived))

    def steps_per_epoch(self, n: int, batch_size: int) -> int:
        per_rank = n // self.world_size
        if per_rank == 0:
            raise PyroVAEError(f"the training split has {n} rows, fewer than the {self.world_size} ranks")
        return max(1, per_rank // batch_size)

    def train_batches(self, data, batch_size: int, seed: int, epoch: int):
        """This rank's full batches of the epoch (``DistributedSampler`` with ``drop_last``: every
        rank gets n // world_size rows, hence the same number of steps)."""
        sampler = DistributedSampler(range(data.x["train"].shape[0]), num_replicas=self.world_size, rank=self.rank,
                                     shuffle=True, seed=seed, drop_last=True)
        sampler.set_epoch(epoch)
        rows = torch.tensor(list(sampler), dtype=torch.long)
        size = min(batch_size, rows.shape[0])
        for start in range(0, rows.shape[0] - size + 1, size):
            yield data.batch("train", rows[start:start + size], self.device)

    def _sum(self, values: list) -> torch.Tensor:
        # float64, so that row counts stay exact and sums lose nothing to the reduction
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t

    def loss_sum(self, value: torch.Tensor, n: int) -> tuple[float, int]:
        # every rank checks the same global number, so all of them stop on a NaN together
        total, count = self._sum([value.item() * n, n]).tolist()
        return total, int(count)

    def average(self, mean_of, rows: torch.Tensor) -> float:
        share = torch.tensor_split(rows, self.world_size)[self.rank]
        local = mean_of(share) * share.shape[0] if share.shape[0] else 0.0
        total, count = self._sum([local, share.shape[0]])
        mean = total / count
        # rank 0's number, bit for bit, on every rank: early stopping must decide alike everywhere
        dist.broadcast(mean, src=0)
        return mean.item()

    def agreed_state(self, pair_state: dict, optimizer_state: dict, train_state: dict) -> dict:
        digests = [None] * self.world_size
        dist.all_gather_object(digests, checkpoint_digest(pair_state, optimizer_state, train_state))
        if len(set(digests)) != 1:
            raise PyroVAEError("model, optimizer or epoch differ across ranks (sha256 "
                               + ", ".join(f"rank {r}: {d[:12]}" for r, d in enumerate(digests)) + ")")
        return {"distributed": {"world_size": self.world_size, "backend": dist.get_backend(),
                                "state_sha256": digests}}


def _torchrun_env() -> tuple[int, int, int]:
    missing = [k for k in TORCHRUN_ENV if not os.environ.get(k)]
    if missing:
        raise PyroVAEError(f"--distributed needs the environment torchrun sets ({', '.join(missing)} missing); "
                           f"launch with `{LAUNCH}`")
    try:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    except ValueError:
        raise PyroVAEError("RANK, WORLD_SIZE and LOCAL_RANK must be integers") from None


def _rank_device(name: str, local_rank: int) -> torch.device:
    """CPU, or the GPU of this local rank: one GPU per process, as NCCL requires."""
    device = resolve_device(name)
    if device.type == "cpu":
        return device
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise PyroVAEError(f"local rank {local_rank} has no GPU of its own: torch sees {count} CUDA device(s) on "
                           "this node; start at most that many processes per node (--nproc_per_node) or use "
                           "--device cpu")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def _lost_peer(err: RuntimeError) -> bool:
    # NCCL and the store raise DistError; gloo a plain RuntimeError that names its own sources
    return isinstance(err, dist.DistError) or "gloo" in str(err)


@contextmanager
def session(device: str, distributed: bool):
    """Yield :class:`Single` or, with ``distributed``, this process's :class:`Group`, joining
    (or reusing) the process group from torchrun's environment: NCCL on GPUs, gloo on CPUs."""
    global _joined
    if not distributed:
        yield Single(resolve_device(device))
        return
    rank, world_size, local_rank = _torchrun_env()
    timeout = timeout_seconds()
    own = not dist.is_initialized()
    try:
        rank_device = _rank_device(device, local_rank)
        if own:
            _joined = True
            dist.init_process_group("nccl" if rank_device.type == "cuda" else "gloo",
                                    timeout=timedelta(seconds=timeout))
        group = Group(rank_device, dist.get_rank(), dist.get_world_size(), local_rank, timeout)
    except PyroVAEError as err:
        raise PyroVAEError(f"rank {rank}: {err}") from None
    except RuntimeError as err:
        if not _lost_peer(err):
            raise
        raise PyroVAEError(f"rank {rank}: could not join the other {world_size - 1} rank(s) within {timeout:g} s "
                           f"(${TIMEOUT_ENV}): {str(err).splitlines()[0]}") from None
    failed = True
    try:
        yield group
        failed = False
    except PyroVAEError as err:
        raise type(err)(f"rank {group.rank}: {err}") from None
    except RuntimeError as err:
        if not _lost_peer(err):
            raise
        raise PyroVAEError(f"rank {group.rank}: lost contact with the other ranks (one failed, or hung past the "
                           f"{timeout:g} s timeout, ${TIMEOUT_ENV}): {str(err).splitlines()[0]}") from None
    finally:
        # After a failure NCCL's teardown may wait on peers that are gone; process exit frees it.
        if own and (not failed or group.device.type == "cpu"):
            dist.destroy_process_group()
