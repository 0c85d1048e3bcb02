"""The training loop: SVI with Pyro's differentiable ELBOs and a torch optimizer.

One epoch = one pass over the training split in shuffled full batches (the last partial batch is
dropped so every step has the same shape, which the JIT objective needs). After each epoch the
validation ELBO (beta = 1, one sample per image) decides early stopping; ``checkpoint.pt`` keeps
the best epoch and ``last.pt`` the latest, with every RNG state, so ``--resume`` continues
bit for bit where an interrupted run stopped.

With ``config.distributed`` the same loop runs on every rank of a torchrun job, with the rank's
share of each batch and of the validation set (see :mod:`pyro_vae.distributed`); only rank 0
writes files.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import pyro
import torch
from tqdm.auto import tqdm

from . import distributed, objectives, rundir, semisupervised
from .config import RunConfig
from .errors import PyroVAEError, TrainingDiverged
from .evaluate import per_datapoint
from .io import write_text_atomic
from .guides import GUIDES
from .likelihoods import LIKELIHOODS
from .models import MODELS
from .nets import ARCHITECTURES
from .priors import PRIORS
from .run import BEST, LAST, TrainState, build, check_names, get_rng_state, load_checkpoint, load_data, \
    make_optimizer, save_checkpoint, set_rng_state


def kl_weight(config: RunConfig, step: int, steps_per_epoch: int) -> float:
    """Linear KL annealing from beta/warmup_steps up to beta over ``warmup_epochs`` (never 0,
    since Pyro's scale must stay positive)."""
    warmup_steps = config.warmup_epochs * steps_per_epoch
    if warmup_steps == 0:
        return config.beta
    return config.beta * min(1.0, (step + 1) / warmup_steps)


@torch.no_grad()
def validation_error(pair, data, device) -> float:
    """The validation classification error of a semi-supervised guide's argmax q(y|x): recorded,
    never used to select a model (that would spend the validation split's labels)."""
    pair.eval()
    try:
        return semisupervised.classification_error(pair.guide, data.observations("valid", device),
                                                   data.labels("valid", device))
    finally:
        pair.train()


@torch.no_grad()
def validation_elbo(pair, data, rows: torch.Tensor, device, labels: bool, batch_size: int = 1000) -> float:
    """The mean one-sample ELBO (beta = 1) over validation ``rows``, moved to ``device`` a batch at
    a time; ``labels``: the model takes the label as an argument."""
    pair.eval()
    total = 0.0
    for i in range(0, rows.shape[0], batch_size):
        x, y = data.batch("valid", rows[i:i + batch_size], device)
        total += per_datapoint(pair.model, pair.guide, x, 1, y=y if labels else None)["elbo"].sum().item()
    pair.train()
    return total / rows.shape[0]


def _write_metrics(run_dir: Path, history: list) -> None:
    write_text_atomic(run_dir / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))


@contextmanager
def _unchanged(pair):
    """Run a block that leaves no trace: RNG states and module buffers (batch-norm statistics)
    restored after it, so a resumed run continues exactly as an uninterrupted one."""
    state = get_rng_state()
    buffers = [(b, b.detach().clone()) for b in pair.buffers()]
    try:
        yield
    finally:
        set_rng_state(state)
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)


def _prime(pair, loss, *args) -> None:
    """Run the loss once, validated, leaving no trace: the JIT objective compiles on its first call
    and draws extra random numbers then, which would make a resumed run differ."""
    with _unchanged(pair), pyro.validation_enabled(True):
        loss(*args)


def _compiled(pair, loss, args) -> tuple:
    """``loss`` compiled, and the seconds its first forward and backward took (the compiling), run
    as ``_prime`` runs a loss, leaving no trace; unvalidated, as the steps that reuse the graphs."""
    compiled = objectives.compiled(loss)
    started = time.perf_counter()
    with _unchanged(pair), pyro.validation_enabled(False):
        compiled(*args).backward()
    pair.zero_grad(set_to_none=True)
    return compiled, time.perf_counter() - started


def _resolve_objective(pair, x: torch.Tensor, y) -> str:
    """The default objective for this pair (``objectives.default_objective``), leaving no trace,
    so a run's draws do not depend on whether its objective was named."""
    with _unchanged(pair):
        return objectives.default_objective(pair.model, pair.guide, x, y)


def fit(config: RunConfig, resume: bool = False, progress: bool | None = None, epochs: int | None = None) -> Path:
    """Train the run described by ``config`` into ``config.out``; return the run directory.

    With ``resume``, the run in ``config.out`` continues from ``last.pt`` with its own config
    (``epochs`` may raise its budget). Bad input raises :class:`PyroVAEError` before anything is
    written, and so does a run directory another process is training into; a NaN/Inf loss raises
    :class:`TrainingDiverged` and leaves the checkpoints as they were.
    With ``config.distributed``, call it on every rank of a torchrun job.
    """
    config = dataclasses.replace(config)  # filled in below; the caller's object stays as given
    run_dir = Path(config.out)
    if not resume:
        rundir.check_empty(run_dir)
        _check(config)
    elif not run_dir.is_dir():
        raise PyroVAEError(f"no checkpoint at {run_dir / LAST}")
    # Only rank 0 of a torchrun job writes files (ctx.is_main), so it alone claims the directory:
    # the other ranks' claims would be refused by its own. Its rank is torchrun's RANK, known
    # before the process group exists, and the claim must come first: a resumed run reads
    # last.pt under it, so that it never continues from a checkpoint another run is replacing.
    writer = not config.distributed or distributed.launched_rank() == 0
    with rundir.claim(run_dir, fresh=not resume) if writer else nullcontext():
        checkpoint = None
        if resume:
            checkpoint = load_checkpoint(run_dir / LAST)
            if checkpoint.config.distributed != config.distributed:
                how = "with" if checkpoint.config.distributed else "without"
                raise PyroVAEError(f"the run in {run_dir} was trained {how} --distributed; resume it the same way")
            rundir.check_config_file(run_dir, checkpoint.config, LAST, epochs)
            if writer:  # a process killed while writing a checkpoint leaves its temporary file (io.atomic_path)
                for stale in run_dir.glob(".*.tmp"):
                    stale.unlink(missing_ok=True)
            config = checkpoint.config
            config.out = str(run_dir)
            if epochs is not None:
                config.epochs = epochs
            _check(config)
        with distributed.session(config.device, config.distributed) as ctx:
            if checkpoint is not None and config.world_size != ctx.world_size:
                raise PyroVAEError(f"the run in {run_dir} was trained on {config.world_size} ranks, not "
                                   f"{ctx.world_size}: resume it on as many, so that its global batch stays the same")
            config.world_size = ctx.world_size
            return _train(config, run_dir, checkpoint, ctx, progress)


def _check(config: RunConfig) -> None:
    """What can be said of ``config`` before any data is read."""
    config.validate()
    check_names(config)
    spec = MODELS[config.model]
    if not spec.semi_supervised and config.labelled is not None:
        raise PyroVAEError(f"--labelled applies to a semi-supervised model (--model m2), not --model {config.model}")
    if spec.semi_supervised and config.distributed:
        raise PyroVAEError(f"--model {config.model} cannot run with --distributed: its batches mix labelled and "
                           "unlabelled images in a fixed ratio that the ranks' shards do not keep")


def _train(config: RunConfig, run_dir: Path, checkpoint, ctx: distributed.Single, progress: bool | None) -> Path:
    device = ctx.device
    with ctx.main_first():  # torchvision extracts MNIST beside its archives on first use: once
        data = load_data(config)  # stays in host memory: batches go to the device one at a time
    spec = MODELS[config.model]
    labels = spec.conditional
    config.likelihood, config.binarize = data.likelihood, data.binarize
    config.classes = data.classes() if spec.labels else None
    # the options a run is built with, defaults included, so that a later change of a default never
    # rebuilds an old checkpoint differently
    for registry, name, field in ((GUIDES, config.guide, "guide_options"), (ARCHITECTURES, config.arch, "arch_options"),
                                  (LIKELIHOODS, config.likelihood, "likelihood_options"),
                                  (PRIORS, config.prior, "prior_options")):
        setattr(config, field, {**registry[name].options(), **getattr(config, field)})
    plan = None
    if spec.semi_supervised:
        plan = semisupervised.TrainingPlan.make(config, data.y["train"])
        config.labelled, config.alpha = plan.labelled.numel(), plan.alpha

    pyro.set_rng_seed(config.seed)
    pair = build(config, data.obs_shape).to(device)
    first = data.batch("train", torch.arange(min(config.batch_size, data.x["train"].shape[0])), device)
    # the loss takes the batches' labels; a semi-supervised model's objective is that of its
    # labelled images, scored with y observed
    takes_y = labels or plan is not None
    first = (first[0], first[1] if takes_y else None)
    if config.objective is None:
        config.objective = _resolve_objective(pair, *first)
    with _unchanged(pair):
        objectives.check_objective(config.objective, pair.model, pair.guide, *first)
    if config.compile and config.objective == "elbo-jit":
        raise PyroVAEError("--compile and --objective elbo-jit both compile the step (torch.compile, torch.jit); "
                           "use one: --compile with --objective elbo computes the same bound")
    if plan:
        semisupervised.check_objective(config.objective)
    optimizer = make_optimizer(pair, config.lr)
    state = TrainState()
    if checkpoint is not None:
        pair.load_state_dict(checkpoint.payload["pair"])
        optimizer.load_state_dict(checkpoint.payload["optimizer"])
        state = checkpoint.train_state
        ctx.agreed_state(pair.state_dict(), optimizer.state_dict(), dataclasses.asdict(state))  # one checkpoint for all
    if plan:
        loss = semisupervised.SemiSupervisedLoss(pair.model, pair.guide, config.objective, plan, config.particles)
        steps_per_epoch = plan.steps_per_epoch
        with _unchanged(pair):  # a mixed batch to prime with, drawn without a trace
            first = next(iter(plan.batches(data, device)))
    else:
        loss = objectives.loss_fn(config.objective, pair.model, pair.guide, config.particles)
        steps_per_epoch = ctx.steps_per_epoch(data.x["train"].shape[0], config.batch_size)
    valid_rows = torch.arange(data.x["valid"].shape[0])
    one = torch.ones((), device=device)

    def args(x, y, beta):  # the loss takes positional tensors (the JIT objective needs them)
        return (x, one * beta) + ((y,) if takes_y else ())

    wrapped = ctx.wrap(loss, config.objective)  # before priming: a refused objective fails before it compiles
    _prime(pair, loss, *args(*first, kl_weight(config, state.step, steps_per_epoch)))
    loss = wrapped
    compile_seconds = None
    if config.compile:
        loss, compile_seconds = _compiled(pair, loss, args(*first, kl_weight(config, state.step, steps_per_epoch)))

    def save(*names: str) -> None:
        extra = ctx.agreed_state(pair.state_dict(), optimizer.state_dict(), dataclasses.asdict(state))
        if ctx.is_main:
            for name in names:
                save_checkpoint(run_dir / name, config, data.obs_shape, pair, optimizer, state, extra)
            # the readable copy of last.pt's config, which --resume checks: a resumed run's
            # --epochs changes both
            config.save(run_dir / rundir.CONFIG)

    if checkpoint is None:
        if ctx.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            if plan:  # which training images were labelled, for the record
                write_text_atomic(run_dir / "labelled.json", json.dumps(plan.record()) + "\n")
        save(LAST, BEST)
    else:
        set_rng_state(checkpoint.payload["rng"])

    label = "J_alpha" if plan else ("iwae" if config.objective == "iwae" else "elbo")
    progress = progress if ctx.is_main else False
    bar = tqdm(total=(config.epochs - state.epoch) * steps_per_epoch, disable=None if progress is None else not progress,
               unit="step", dynamic_ncols=True)
    try:
        with pyro.validation_enabled(False):  # validated once by _prime; checks cost time per step
            while state.epoch < config.epochs and state.epoch - state.best_epoch < config.patience:
                started = time.perf_counter()
                total, seen = 0.0, 0
                ctx.seed_epoch(config.seed, state.epoch)
                batches = plan.batches(data, device) if plan else \
                    ctx.train_batches(data, config.batch_size, config.seed, state.epoch)
                for x, y in batches:
                    beta = kl_weight(config, state.step, steps_per_epoch)
                    optimizer.zero_grad(set_to_none=True)
                    value = loss(*args(x, y, beta)) / x.shape[0]
                    batch_total, batch_seen = ctx.loss_sum(value, x.shape[0])
                    if not math.isfinite(batch_total):
                        raise TrainingDiverged(
                            f"training diverged: the loss became {batch_total / batch_seen} at epoch "
                            f"{state.epoch + 1}, step {state.step + 1}; the last good checkpoints (epoch "
                            f"{state.epoch}) are kept in {run_dir}")
                    value.backward()
                    optimizer.step()
                    state.step += 1
                    total, seen = total - batch_total, seen + batch_seen
                    bar.update(1)
                    bar.set_postfix({"epoch": state.epoch + 1, label: f"{total / seen:.2f}", "beta": f"{beta:.2f}"},
                                    refresh=False)
                state.epoch += 1
                valid = ctx.average(lambda rows: validation_elbo(pair, data, rows, device, labels), valid_rows)
                if not math.isfinite(valid):
                    raise TrainingDiverged(f"training diverged: validation ELBO is {valid} after epoch {state.epoch}; "
                                           f"the last good checkpoints are kept in {run_dir}")
                state.history.append({"epoch": state.epoch, "step": state.step, "train_objective": total / seen,
                                      "beta": beta, "valid_elbo": valid, "seconds": time.perf_counter() - started})
                if plan:
                    state.history[-1]["valid_error"] = validation_error(pair, data, device)
                if compile_seconds is not None:  # the first epoch of this process: it paid for the compiling
                    state.history[-1]["compile_seconds"], compile_seconds = compile_seconds, None
                best = valid > state.best_valid
                if best:
                    state.best_valid, state.best_epoch = valid, state.epoch
                save(*((BEST, LAST) if best else (LAST,)))
                if ctx.is_main:
                    _write_metrics(run_dir, state.history)
                if progress is not False:
                    error = f"  valid error {state.history[-1]['valid_error']:.4f}" if plan else ""
                    bar.write(f"epoch {state.epoch:4d}  train {label} {total / seen:9.3f}  valid elbo {valid:9.3f}"
                              + error + ("  *best" if state.best_epoch == state.epoch else ""))
    finally:
        bar.close()
    if ctx.is_main:
        _write_figures(run_dir, data, state.history, device)
    ctx.barrier()  # the run directory is complete when fit returns, on every rank
    return run_dir


def _write_figures(run_dir: Path, data, history: list, device) -> None:
    from . import plots  # matplotlib loads only when figures are drawn

    best = load_checkpoint(run_dir / BEST, device)
    plots.training_figures(run_dir, best.pair, data, history)
