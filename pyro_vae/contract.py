"""The model contract, read through Pyro's traces.

A model and a guide are callables ``model(x, y=None)`` and ``guide(x, y=None)`` (a callable
that takes no ``y`` is called as ``fn(x)`` when there is none) whose per-datapoint sample sites
all sit inside one ``pyro.plate("data", N)``: any number of latent sites, each with its own event
shape; observed sites (``obs=``) are the likelihood. Everything after training (evaluation,
diagnostics, comparisons, plots) reads a pair through the functions here, so a user's own Pyro
model works with all of it. Particles are vectorized by an outer ``pyro.plate("particles", K,
dim=-2)``, so every per-datapoint log-density has shape (K, N). A discrete guide site marked for
parallel enumeration (``config_enumerate``: the label of a semi-supervised model) is enumerated
to the left of those dimensions, its values scored all at once (see ``site_terms``).
"""

from __future__ import annotations

import pyro
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from .errors import PyroVAEError

PARTICLE_DIM = -2


class ScaleLatents(Messenger):
    """Scales the log-density of every latent (unobserved) sample site by ``scale``: the KL
    weight beta of the beta-VAE objective E_q[log p(x|z)] - beta KL(q||p), applied to model and
    guide alike from outside, so that a model need not know about it."""

    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def _process_message(self, msg):
        if msg["type"] == "sample" and not msg["is_observed"]:
            msg["scale"] = self.scale * msg["scale"]


def call(fn, x, y=None):
    """``fn(x, y)``, or ``fn(x)`` when there is no ``y`` (for models written without one)."""
    return fn(x) if y is None else fn(x, y)


def with_particles(fn, particles: int | None):
    """``fn`` inside ``pyro.plate("particles", particles, dim=-2)``; ``fn`` itself for None."""
    return fn if particles is None else pyro.plate("particles", particles, dim=PARTICLE_DIM)(fn)


def sample_sites(trace) -> list[dict]:
    return [site for site in trace.nodes.values() if site["type"] == "sample" and not site_is_subsample(site)]


def traces(model, guide, x: torch.Tensor, y=None, particles: int | None = None):
    """(guide trace, model trace replayed on the guide's draws) for one joint draw of ``particles``
    vectorized samples (none: no particle dimension); guide sites marked for parallel enumeration
    take all their values, in dimensions left of the particle and data dimensions."""
    first_enum_dim = PARTICLE_DIM - (particles is not None)
    enumerated = poutine.enum(with_particles(lambda *a: call(guide, *a), particles), first_available_dim=first_enum_dim)
    guide_trace = poutine.trace(enumerated).get_trace(x, y)
    replayed = poutine.replay(lambda *a: call(model, *a), trace=guide_trace)
    model_trace = poutine.trace(with_particles(replayed, particles)).get_trace(x, y)
    return guide_trace, model_trace


def is_enumerated(site: dict) -> bool:
    return site["infer"].get("enumerate") == "parallel" and "_enumerate_dim" in site["infer"]


def _per_datapoint(site: dict, log_prob: torch.Tensor, shape: tuple, enum_dims: int = 0) -> torch.Tensor:
    # enumerated sites add dimensions on the left, kept as they are
    lead = min(max(0, log_prob.dim() - len(shape)), enum_dims)
    shape = tuple(log_prob.shape[:lead]) + shape
    if tuple(log_prob.shape) != shape:
        try:
            log_prob = log_prob.expand(shape)
        except RuntimeError:
            raise PyroVAEError(
                f"site {site['name']!r} has a log-density of shape {tuple(log_prob.shape)}, not {shape}: the model "
                "contract needs every sample site inside pyro.plate('data', N), its event dimensions declared "
                "(.to_event)") from None
        if log_prob.dim() == 0 or log_prob.stride(-1) == 0:
            raise PyroVAEError(f"site {site['name']!r} is outside pyro.plate('data', N): the model contract scores "
                               "per datapoint, so every sample site must sit inside that plate")
    return log_prob


def site_terms(model, guide, x: torch.Tensor, y=None, particles: int | None = None) -> dict:
    """One vectorized joint draw, scored site by site, unscaled (bounds are reported at beta = 1).

    Returns ``log_lik`` (the observed sites' log-densities summed) and ``latent`` (site name ->
    (log p, log q) of that latent site), each log-density of shape (particles, N), or (N,)
    without particles; ``enumerated``, the names of the guide's enumerated sites, whose values
    add dimensions on the left of those (one per site, broadcastable); ``values``, the guide's draw
    of each latent site, and ``discrete``, the latent sites of discrete support.
    """
    guide_trace, model_trace = traces(model, guide, x, y, particles)
    shape = ((particles,) if particles is not None else ()) + (x.shape[0],)
    enumerated = [s["name"] for s in sample_sites(guide_trace) if not s["is_observed"] and is_enumerated(s)]
    log_q, values, discrete = {}, {}, []
    for site in sample_sites(guide_trace):
        if site["is_observed"]:
            continue
        log_q[site["name"]] = _per_datapoint(site, site["fn"].log_prob(site["value"]), shape, len(enumerated))
        values[site["name"]] = site["value"]
        if site["fn"].support.is_discrete:
            discrete.append(site["name"])
    log_lik, latent = 0.0, {}
    for site in sample_sites(model_trace):
        log_prob = _per_datapoint(site, site["fn"].log_prob(site["value"]), shape, len(enumerated))
        if site["is_observed"]:
            log_lik = log_lik + log_prob
        elif site["name"] not in log_q:
            raise PyroVAEError(f"latent site {site['name']!r} of the model has no site of that name in the guide")
        else:
            latent[site["name"]] = (log_prob, log_q[site["name"]])
    missing = sorted(set(log_q) - set(latent))
    if missing:
        raise PyroVAEError(f"guide sites {', '.join(map(repr, missing))} have no latent site of that name in the model")
    return {"log_lik": log_lik, "latent": latent, "enumerated": enumerated, "values": values, "discrete": discrete}


@torch.no_grad()
def latent_shapes(model, x: torch.Tensor, y=None) -> dict[str, tuple]:
    """Latent site name -> event shape, in the model's order, from one prior draw on ``x[:1]``."""
    trace = poutine.trace(lambda *a: call(model, *a)).get_trace(x[:1], None if y is None else y[:1])
    return {site["name"]: tuple(site["fn"].event_shape) for site in sample_sites(trace) if not site["is_observed"]}


@torch.no_grad()
def discrete_sites(model, x: torch.Tensor, y=None) -> list[str]:
    """Latent sites of the model with a discrete support (a label left unobserved), from one prior
    draw on ``x[:1]``."""
    trace = poutine.trace(lambda *a: call(model, *a)).get_trace(x[:1], None if y is None else y[:1])
    return [s["name"] for s in sample_sites(trace) if not s["is_observed"] and s["fn"].support.is_discrete]


def layout(shapes: dict[str, tuple]) -> dict[str, slice]:
    """Site name -> its columns when the sites' values are flattened and joined in this order."""
    out, start = {}, 0
    for name, shape in shapes.items():
        size = int(torch.Size(shape).numel())
        out[name] = slice(start, start + size)
        start += size
    return out


def flatten(values: dict[str, torch.Tensor], shapes: dict[str, tuple], lead: int) -> torch.Tensor:
    """Values (..., *event) of the sites in ``shapes``, flattened and joined along the last axis;
    ``lead`` is the number of leading (sample, datapoint) dimensions."""
    missing = sorted(set(shapes) - set(values))
    if missing:
        raise PyroVAEError(f"no draws for latent sites {', '.join(missing)}")
    return torch.cat([values[name].reshape(values[name].shape[:lead] + (-1,)) for name in shapes], -1)


@torch.no_grad()
def guide_draws(guide, x: torch.Tensor, y=None, samples: int = 1, chunk: int = 100) -> dict[str, torch.Tensor]:
    """Site name -> draws of q of shape (samples, N, *event), in chunks of ``chunk`` particles."""
    parts: dict[str, list] = {}
    for start in range(0, samples, chunk):
        k = min(chunk, samples - start)
        trace = poutine.trace(with_particles(lambda *a: call(guide, *a), k)).get_trace(x, y)
        for site in sample_sites(trace):
            if not site["is_observed"]:
                value = site["value"]
                event = site["fn"].event_shape
                parts.setdefault(site["name"], []).append(value.expand((k, x.shape[0]) + tuple(event)))
    return {name: torch.cat(chunks) for name, chunks in parts.items()}


def log_joint(model, x: torch.Tensor, values: dict[str, torch.Tensor], y=None, particles: int | None = None,
              shape_check: bool = True):
    """log p(x, z) with the latent sites set to ``values`` (site -> (particles, N, *event), or
    (N, *event) without particles), summed over all sites: shape (particles, N) or (N,). Without
    ``shape_check`` the values may carry any batch dimensions left of N, which the sites'
    log-densities broadcast over (no particle plate is opened: for use inside another program's
    plates)."""
    conditioned = poutine.condition(lambda *a: call(model, *a), data=values)
    trace = poutine.trace(with_particles(conditioned, particles)).get_trace(x, y)
    shape = ((particles,) if particles is not None else ()) + (x.shape[0],)
    total = 0.0
    for site in sample_sites(trace):
        if not site["is_observed"] and site["name"] not in values:
            raise PyroVAEError(f"no value given for latent site {site['name']!r}")
        log_prob = site["fn"].log_prob(site["value"])
        total = total + (_per_datapoint(site, log_prob, shape) if shape_check else log_prob)
    return total


@torch.no_grad()
def site_means(guide, x: torch.Tensor, y=None, samples: int = 1000) -> dict[str, torch.Tensor]:
    """Site name -> E_q[z|x] flattened to (N, d): closed form where the guide has one (a guide
    with ``site_means(x, y)``, or the suite's single-site guide with ``site_name`` and ``mean``)."""
    if callable(getattr(guide, "site_means", None)):
        return {name: m.reshape(x.shape[0], -1) for name, m in guide.site_means(x, y).items()}
    name = getattr(guide, "site_name", None)
    if name is not None and callable(getattr(guide, "mean", None)):
        return {name: guide.mean(x, y)}
    return {name: d.mean(0).reshape(x.shape[0], -1) for name, d in guide_draws(guide, x, y, samples).items()
            if d.is_floating_point()}  # a discrete site (a label) has no mean to report


@torch.no_grad()
def site_moments(guide, x: torch.Tensor, y=None, samples: int = 1000) -> dict[str, tuple]:
    """Site name -> (mean, per-dimension variance) of q(z|x), each flattened to (N, d), for the
    continuous sites."""
    name = getattr(guide, "site_name", None)
    if name is not None and callable(getattr(guide, "moments", None)):
        return {name: guide.moments(x, y)}
    out = {}
    for name, d in guide_draws(guide, x, y, samples).items():
        if not d.is_floating_point():
            continue
        flat = d.reshape(samples, x.shape[0], -1)
        out[name] = (flat.mean(0), flat.var(0))
    return out


def guide_log_prob(guide, x: torch.Tensor, values: dict[str, torch.Tensor], y=None) -> torch.Tensor:
    """log q(z_s | x_m) of given draws at every row of ``x``: ``values`` maps each latent site of the
    guide to draws of shape (S, *event), and the result has shape (S, N), summed over sites.

    The draws are broadcast against the rows as S particles, so the guide runs once on ``x``.
    A guide that can score only its own draws (planar and radial flows cache them) raises
    :class:`PyroVAEError`.
    """
    if not values:
        raise PyroVAEError("no draws given to score")
    s, n = next(iter(values.values())).shape[0], x.shape[0]
    expanded = {name: v.unsqueeze(1).expand((s, n) + tuple(v.shape[1:])) for name, v in values.items()}
    conditioned = poutine.condition(lambda *a: call(guide, *a), data=expanded)
    try:
        trace = poutine.trace(with_particles(conditioned, s)).get_trace(x, y)
        total, scored = 0.0, set()
        for site in sample_sites(trace):
            if site["name"] not in expanded:
                if not site["is_observed"]:
                    raise PyroVAEError(f"no draws given for the guide's latent site {site['name']!r}")
                continue
            total = total + _per_datapoint(site, site["fn"].log_prob(site["value"]), (s, n))
            scored.add(site["name"])
    except (KeyError, NotImplementedError) as err:
        raise PyroVAEError("this guide's q(z|x) can be scored only at its own draws (planar and radial flows "
                           f"have no inverse: {type(err).__name__}), and this needs it at any z") from None
    missing = sorted(set(expanded) - scored)
    if missing:
        raise PyroVAEError(f"the guide has no latent sites {', '.join(map(repr, missing))}")
    return total


@torch.no_grad()
def prior_draws(model, x: torch.Tensor, y=None, values: dict | None = None) -> dict[str, torch.Tensor]:
    """Site name -> one draw per row of ``x`` of every latent site from the model (its prior, the
    layers drawn in order; ``values`` fixes some sites, the rest follow them), each (N, *event)."""
    fn = (lambda *a: call(model, *a)) if not values else poutine.condition(lambda *a: call(model, *a), data=values)
    trace = poutine.trace(fn).get_trace(x, y)
    return {s["name"]: s["value"] for s in sample_sites(trace) if not s["is_observed"] or s["name"] in (values or {})}


@torch.no_grad()
def observation(model, x: torch.Tensor, y=None, values: dict | None = None):
    """The distribution of the model's observed site given one prior draw (or ``values``) per row
    of ``x`` (whose values it ignores): what the model generates. A model with several observed
    sites gives the one whose value is ``x``."""
    fn = (lambda *a: call(model, *a)) if not values else poutine.condition(lambda *a: call(model, *a), data=values)
    trace = poutine.trace(fn).get_trace(x, y)
    observed = [s for s in sample_sites(trace) if s["is_observed"] and s["name"] not in (values or {})]
    for site in observed:
        if site["value"] is x:
            return site["fn"]
    if len(observed) == 1:
        return observed[0]["fn"]
    raise PyroVAEError("the model has no observed site holding x")
