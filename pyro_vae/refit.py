"""Ex-post density estimation: a new prior fitted to a trained model's codes.

``refit`` draws one code z ~ q(z|x) of the prior's site (the top layer of a hierarchical model)
per training image, fits a density to them (``REFITS``: a full-covariance Gaussian mixture by EM,
or a RealNVP flow by maximum likelihood with early stopping on the validation codes), and writes a
new run: the same model and guide with the fitted density as its prior. Everything downstream
(``sample``, ``quality``, ``evaluate``) then uses that prior; the new run's NLL is the importance-
sampled bound of log of the integral of p(x|z) p_new(z), honestly a different model's, with the
same guide as proposal.

References: Ghosh, Sajjadi, Vergari, Black & Schölkopf 2019, "From Variational to Deterministic
Autoencoders", arXiv:1903.12436 (ex-post density estimation); Xu et al. 2019, arXiv:1905.13452.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import torch

from . import contract, priors
from .errors import PyroVAEError
from .io import write_text_atomic
from .registry import Registry
from .run import BEST, Pair, TrainState, build, load_run_and_data, make_optimizer, save_checkpoint


def _prior_site(model) -> str:
    name = getattr(model, "prior_site", None)
    if name is None:
        raise PyroVAEError("refit-prior needs a model with one prior site (the suite's models have prior_site)")
    return name


@torch.no_grad()
def codes(pair: Pair, data, split: str, device, labels: bool, batch_size: int = 500) -> torch.Tensor:
    """One draw of the prior site from q(z|x) per image of ``split``, (N, L) float64 on the CPU."""
    pair.eval()
    name = _prior_site(pair.model)
    x = data.observations(split, device)
    y = data.labels(split, device) if labels else None
    parts = [contract.guide_draws(pair.guide, x[i:i + batch_size], None if y is None else y[i:i + batch_size])[name][0]
             for i in range(0, x.shape[0], batch_size)]
    return torch.cat(parts).reshape(x.shape[0], -1).double().cpu()


def _fit_gmm(train: torch.Tensor, valid: torch.Tensor, components: int = 10, seed: int = 0, **_):
    from sklearn.mixture import GaussianMixture

    if train.shape[0] < components:
        raise PyroVAEError(f"--components {components} needs at least as many training codes, got {train.shape[0]}")
    gmm = GaussianMixture(components, covariance_type="full", reg_covar=1e-6, max_iter=500, n_init=1,
                          random_state=seed).fit(train.numpy())
    prior = priors.MixturePrior(train.shape[1], components, "full")
    prior.set_parameters(torch.as_tensor(gmm.weights_), torch.as_tensor(gmm.means_),
                         torch.linalg.cholesky(torch.as_tensor(gmm.covariances_)))
    return prior.float(), "mog", {"components": components, "covariance": "full"}


def _fit_realnvp(train: torch.Tensor, valid: torch.Tensor, epochs: int = 200, seed: int = 0, patience: int = 20,
                 batch_size: int = 500, lr: float = 1e-3, **_):
    torch.manual_seed(seed)
    prior = priors.RealNVPPrior(train.shape[1])
    optimizer = torch.optim.Adam(prior.parameters(), lr=lr)
    train, valid = train.float(), valid.float()
    best, best_state, waited = -math.inf, None, 0
    for _ in range(epochs):
        for rows in torch.randperm(train.shape[0]).split(batch_size):
            optimizer.zero_grad()
            (-prior().log_prob(train[rows]).mean()).backward()
            optimizer.step()
        with torch.no_grad():
            score = prior().log_prob(valid).mean().item()
        if score > best:
            best, best_state, waited = score, {k: v.clone() for k, v in prior.state_dict().items()}, 0
        else:
            waited += 1
            if waited >= patience:
                break
    prior.load_state_dict(best_state)
    return prior, "realnvp", {}


REFITS = Registry("refit density")
REFITS.add("gmm", _fit_gmm, "full-covariance Gaussian mixture fitted by EM (scikit-learn), the prior mog --covariance full",
           reference="Ghosh et al. 2019, arXiv:1903.12436")
REFITS.add("realnvp", _fit_realnvp, "RealNVP (4 affine couplings) fitted by maximum likelihood, early-stopped on "
           "validation codes", reference="Xu et al. 2019, arXiv:1905.13452")


def codes_seed(seed: int) -> int:
    """The torch seed the refit's codes are drawn with: derived from ``seed`` and a tag of its own, so
    they are never the draws ``quality`` makes at the same seed (on those, in collapsed dimensions
    where a code is q's noise alone, the fitted density would be scored on the points it was fitted
    to, and the marginal KL came out negative)."""
    return int(np.random.SeedSequence([seed, 0x2EF17]).generate_state(1)[0])


def _take_directory(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PyroVAEError(f"--out {out} exists and is not empty; refit-prior writes a new run")
    out.mkdir(parents=True, exist_ok=True)


def refit(run_dir, density: str, out, components: int = 10, seed: int = 0, device="cpu",
          data_dir: str | None = None) -> dict:
    """Fit ``density`` to the training codes of ``run_dir`` and write the run ``out`` with it as
    the prior; returns what ``out/refit.json`` records."""
    from .models import MODELS

    entry = REFITS[density]
    if not isinstance(components, int) or isinstance(components, bool) or components <= 0:
        raise PyroVAEError(f"--components must be a positive integer, got {components!r}")
    out = Path(out)
    if out.resolve() == Path(run_dir).resolve():
        raise PyroVAEError("--out must be a new run directory, not the run refitted")
    checkpoint, data = load_run_and_data(run_dir, device, data_dir)
    labels = MODELS[checkpoint.config.model].conditional
    torch.manual_seed(codes_seed(seed))
    train, valid = (codes(checkpoint.pair, data, split, device, labels) for split in ("train", "valid"))
    prior, name, options = entry.build(train, valid, components=components, seed=seed)
    with torch.no_grad():
        fit = {split: prior().log_prob(c.float()).mean().item() for split, c in (("train", train), ("valid", valid))}
    config = dataclasses.replace(checkpoint.config, prior=name, prior_options=options, out=str(out))
    pair = build(config, checkpoint.obs_shape)
    state = {k: v for k, v in checkpoint.pair.state_dict().items() if not k.startswith("model.prior.")}
    state.update({f"model.prior.{k}": v for k, v in prior.state_dict().items()})
    pair.load_state_dict(state)
    _take_directory(out)
    record = {"source_run": str(Path(run_dir).resolve()), "density": density, "prior": name, "prior_options": options,
              "site": _prior_site(pair.model), "codes": {"train": train.shape[0], "valid": valid.shape[0]},
              "log_density_per_code": fit, "seed": seed}
    source = checkpoint.train_state
    state = TrainState(epoch=source.epoch, step=source.step, best_valid=-math.inf, best_epoch=source.epoch,
                       history=[])
    save_checkpoint(out / BEST, config, checkpoint.obs_shape, pair, make_optimizer(pair, config.lr), state,
                    extra={"refit": record})
    config.save(out / "config.json")
    write_text_atomic(out / "refit.json", json.dumps(record, indent=2) + "\n")
    return record


__all__ = ["REFITS", "codes", "refit"]
