"""Published figures, the bits/dim convention, the results files and the markdown table of ``nll.py``.

Kept apart from the grid and the runner: the table is regenerated from the results files alone.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from pyro_vae.errors import PyroVAEError

# pyro_vae.data divides Frey faces' 8-bit grey levels by 255: neighbouring levels lie 1/255 apart.
FREY_LEVEL_SCALE = 255


def bits_per_dim(nats: float, dim: int, scale: int = FREY_LEVEL_SCALE) -> float:
    """Bits per pixel of a density on grey levels divided by ``scale``.

    A density p(x) on x = k/scale gives the level k the probability p(x)/scale (the density times the
    bin width 1/scale, to first order), so -log2 P = (NLL + D ln scale) / (D ln 2) per pixel. Published
    Frey bits/dim use a 256-way categorical per pixel instead, so the two agree only approximately.
    """
    return (nats + dim * math.log(scale)) / (dim * math.log(2))


def bits_se(nats_se: float, dim: int) -> float:
    return nats_se / (dim * math.log(2))


@dataclass(frozen=True)
class OneOf:
    """A setting value that any of ``values`` meets (``Anchor.setting``)."""

    values: tuple

    def __eq__(self, other):
        return other in self.values

    def __hash__(self):
        return hash(self.values)


@dataclass(frozen=True)
class Anchor:
    """A published figure and the exact setting it belongs to: ``setting`` maps Cell fields to the
    values a cell must have for the figure to be shown beside it."""

    metric: str  # "nll" or "neg_elbo" (nats per image), "nll_bits_per_dim" or "neg_elbo_bits_per_dim"
    value: float
    label: str
    setting: dict
    source: str
    bound: str = ""  # "≤" where the paper reports an upper bound on the NLL
    note: str = ""

    @property
    def in_bits(self) -> bool:
        """A figure in bits per dimension, shown in the bits/dim column beside the cell's own."""
        return self.metric.endswith("_bits_per_dim")

    @property
    def quantity(self) -> str:
        return "NLL" if self.metric.startswith("nll") else "−ELBO"


STATIC = {"dataset": "binarized-mnist", "binarize": "none"}
DYNAMIC = {"dataset": "mnist", "binarize": "dynamic"}
RM_NET = {"arch": "mlp", "hidden": (400,), "latent_dim": 40, "particles": 1}
BURDA_NET = {"arch": "mlp", "hidden": (200, 200), "latent_dim": 50, "activation": "tanh", "guide": "diag",
             "batch_norm": False}
# Burda et al.'s two stochastic layers: 784-200-200-z1(100)-100-100-z2(50) tanh, q(z1|x) q(z2|z1)
BURDA2_NET = {"arch": "mlp", "hidden": (200, 200), "latent_dim": (100, 50), "layer_hidden": (100, 100),
              "activation": "tanh", "guide": "diag", "inference": "bottom-up", "batch_norm": False}
# Sonderby et al.'s five-layer LVAE as the suite approximates it (nll.NETS["lvae"], the paper tier's notes)
LVAE_NET = {"arch": "mlp", "hidden": (512, 512), "latent_dim": (64, 32, 16, 8, 4), "layer_hidden": (160, 160),
            "activation": "relu", "guide": "diag", "inference": "ladder", "batch_norm": True, "warmup_epochs": 200}
RM = "Rezende & Mohamed 2015, arXiv:1505.05770"
BURDA = "Burda et al. 2016, arXiv:1509.00519"
SONDERBY = "Sønderby et al. 2016, arXiv:1602.02282"
VDBERG = "van den Berg et al. 2018 (Sylvester flows), arXiv:1803.05649"
KINGMA_IAF = "Kingma et al. 2016, arXiv:1606.04934"
# Frey faces' 8-bit pixels scored exactly (the probabilities of their 256 levels), one stochastic
# layer trained on the ELBO: the quantity of van den Berg et al.'s Frey column. Their likelihood is
# the 256-way categorical; a mixture of discretized logistics bounds the same -log2 P(x).
FREY8 = {"dataset": "frey", "binarize": "none", "likelihood": OneOf(("categorical", "dmol")), "objective": "elbo",
         "particles": 1, "layer_hidden": None}
VDBERG_NOTE = ("on the test split, a 256-way categorical per pixel; gated-convolution encoder "
               "and decoder, z = 64, up to 2000 epochs with early stopping and KL warm-up, 1565/200/200 images "
               "shuffled with three seeds (the suite: an MLP, z = 10, its fixed 1573/196/196 split); flow lengths "
               "as in the paper, not matched here")

# From ../shared/ANCHORS.md. Van den Berg et al.'s binarized-MNIST and Kingma et al.'s MNIST conv
# figures have no cell here: their gated-conv and ResNet networks are not the suite's conv
# architecture. Their 8-bit figures (Frey faces, CIFAR-10) stand, in bits/dim, beside the cells of the
# same data and likelihood as context for the gap, the networks being named as different.
ANCHORS: dict[str, Anchor] = {
    "rm-dlgm-diag": Anchor("nll", 89.9, "R&M DLGM diagonal", {**STATIC, **RM_NET, "guide": "diag", "objective": "elbo"},
                           RM, bound="≤"),
    "pythae-vae": Anchor("nll", 89.78, "pythae VAE", {**STATIC, **RM_NET, "guide": "diag", "objective": "elbo"},
                         "pythae reproducibility README",
                         note="200 IS (more samples lower the estimate in expectation)"),
    "rm-planar-80": Anchor("nll", 85.1, "R&M DLGM + planar K=80",
                           {**STATIC, **RM_NET, "guide": "planar", "flows": 80, "objective": "elbo"}, RM, bound="≤"),
    "burda-static-iwae50": Anchor("nll", 87.10, "Burda IWAE k=50",
                                  {**STATIC, **BURDA_NET, "objective": "iwae", "particles": 50},
                                  f"{BURDA}, appendix", note="5000 IS"),
    **{f"burda-dynamic-{obj}{k}": Anchor("nll", value, f"Burda {'VAE' if obj == 'elbo' else 'IWAE'} k={k}",
                                         {**DYNAMIC, **BURDA_NET, "objective": obj, "particles": k}, BURDA,
                                         note="3280 epochs, 5000 IS")
       for obj, values in (("elbo", (86.76, 86.47, 86.35)), ("iwae", (86.76, 85.54, 84.78)))
       for k, value in zip((1, 5, 50), values)},
    **{f"burda2-dynamic-{obj}{k}": Anchor("nll", value, f"Burda 2-layer {'VAE' if obj == 'elbo' else 'IWAE'} k={k}",
                                          {**DYNAMIC, **BURDA2_NET, "objective": obj, "particles": k},
                                          f"{BURDA}, Table 1", note="two stochastic layers, 3280 epochs, 5000 IS")
       for obj, values in (("elbo", (85.33, 85.01, 84.78)), ("iwae", (85.33, 83.89, 82.90)))
       for k, value in zip((1, 5, 50), values)},
    "lvae5-dynamic-finetuned-iw10": Anchor(
        "nll", 81.74, "LVAE 5 layers, fine-tuned with IW=10",
        {**DYNAMIC, **LVAE_NET, "objective": "elbo", "particles": 1}, f"{SONDERBY}, Table 1",
        note="the row \"LVAE, 5-layer + finetuning + IW=10\": after the 2000 epochs, 2000 more with a decaying "
             "learning rate and 10 importance samples in training, which this cell does not run; 5000 IS"),
    **{f"vdberg-frey-{guide}": Anchor("neg_elbo_bits_per_dim", value, f"vdB {label}", {**FREY8, "guide": guide},
                                      f"{VDBERG}, Freyfaces column", note=VDBERG_NOTE)
       for guide, label, value in (("diag", "no flow", 4.53), ("planar", "planar", 4.40), ("iaf", "IAF", 4.47))},
    "kingma-cifar10-iaf": Anchor(
        "nll_bits_per_dim", 3.11, "Kingma ResNet VAE + IAF",
        {"dataset": "cifar10", "binarize": "none", "likelihood": "dlogistic", "guide": "iaf", "objective": "elbo"},
        KINGMA_IAF, note="discretized logistic pixels; a hierarchy of spatial latent layers with bidirectional "
                         "inference (the suite: one latent vector); 10,000 importance samples (3.15 bits/dim with "
                         "one sample, per the openai/iaf README)"),
}


def anchors_for(cell) -> list[str]:
    """Keys of the published figures whose whole setting this cell has."""
    return [key for key, a in ANCHORS.items() if all(getattr(cell, f) == v for f, v in a.setting.items())]


def dated_files(results: Path, name: str) -> list[Path]:
    """The results files ``<name>-YYYY-MM-DD.jsonl`` in ``results``, oldest first."""
    pattern = re.compile(rf"{re.escape(name)}-\d{{4}}-\d{{2}}-\d{{2}}\.jsonl")
    return sorted(p for p in results.glob("*.jsonl") if pattern.fullmatch(p.name)) if results.is_dir() else []


def results_files(results: Path, tier: str, device: str) -> list[Path]:
    return dated_files(results, f"{tier}-{device}")


def read_records(results: Path, tier: str, device: str) -> list[dict]:
    return read_lines(results_files(results, tier, device))


def read_lines(paths: list[Path]) -> list[dict]:
    """Every JSON line of ``paths``, in order; a line that is not JSON is a user error naming it."""
    records = []
    for path in paths:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    raise PyroVAEError(f"{path}, line {n}, is not JSON; remove or repair it") from None
    return records


def latest(records: list[dict]) -> dict:
    """Cell id -> its newest line (by ``finished``), the ids in the order they first finished."""
    out = {}
    for r in sorted(records, key=lambda r: r["finished"]):
        out[r["id"]] = r
    return out


def _pm(value: float, se: float, digits: int = 2) -> str:
    return f"{value:.{digits}f} ± {se:.{digits}f}"


def exact_bits(r: dict) -> bool:
    """Whether a line's bits/dim are exact (a likelihood over 256 levels), not the Gaussian's bin-width
    conversion."""
    return r.get("likelihood_levels") == 256


def bits_cells(r: dict) -> list[str]:
    """The two bits/dim cells of a line: −ELBO ± se and NLL ± se (K); "≈" marks the Gaussian cells'
    conversion (lines written before its −ELBO se was recorded show the value alone); blank without."""
    if r.get("nll_bits_per_dim") is None:
        return ["", ""]
    mark = "" if exact_bits(r) else "≈ "
    se = r.get("neg_elbo_bits_per_dim_se")
    elbo = mark + (_pm(r["neg_elbo_bits_per_dim"], se, 3) if se is not None else f"{r['neg_elbo_bits_per_dim']:.3f}")
    return [elbo, f"{mark}{_pm(r['nll_bits_per_dim'], r['nll_bits_per_dim_se'], 3)} ({r['iw_samples']})"]


def _published(r: dict, footnotes: dict, in_bits: bool) -> str:
    shown = []
    for key in r["anchors"]:
        a = ANCHORS[key]
        if a.in_bits != in_bits:
            continue
        n = footnotes.setdefault(key, len(footnotes) + 1)
        gap = r[a.metric] - a.value
        what = f"{a.quantity} " if in_bits else ""
        shown.append(f"{a.label}: {what}{a.bound + ' ' if a.bound else ''}{a.value:.2f} [{n}] (ours {gap:+.2f})")
    return "; ".join(shown)


def row(r: dict, footnotes: dict) -> list[str]:
    """The table cells of one result line (``footnotes`` numbers the anchors as they appear)."""
    test = r["test"]
    images = f"{test['n']} (all)" if test["stride"] == 1 else f"{test['n']} (test[::{test['stride']}])"
    memory = f"{r['peak_rss_mib']:.0f} (+{r['peak_rss_delta_mib']:.0f})"
    if r.get("cuda_peak_mib") is not None:
        memory += f"; CUDA {r['cuda_peak_mib']:.0f}"
    published_bits = _published(r, footnotes, in_bits=True)
    published = _published(r, footnotes, in_bits=False)
    params = r["parameters"]
    total = params.get("total", params["model"] + params["guide"])  # lines before "total": no sharing
    flag = " †" if r["contended"] else ""
    units = f"{r['active_units']}/{r['latent_dim']}"
    sites = r.get("active_units_per_site") or {}
    if len(sites) > 1:  # several stochastic layers: each one's share, nearest x first
        order = sorted(sites, key=lambda s: (len(s), s))  # z1, z2, ..., z10: nearest x first
        units += " (" + ", ".join(f"{s} {sites[s]}/{r['latent_dims_per_site'][s]}" for s in order) + ")"
    return [f"`{r['id']}`", images, f"{r['epochs']} ({r['best_epoch']})", _pm(r["neg_elbo"], r["neg_elbo_se"]),
            f"{_pm(r['nll'], r['nll_se'])} ({r['iw_samples']})", *bits_cells(r), published_bits, units,
            f"{r['seconds_per_epoch']:.2f}{flag}", memory, f"{total:,}",
            f"{r['wall_seconds']:.0f}", published]


HEADER = ["cell", "test images", "epochs (best)", "−ELBO ± se", "NLL ± se (IS)", "−ELBO bits/dim ± se",
          "NLL bits/dim ± se (IS)", "published bits/dim (ANCHORS.md)", "active units", "s/epoch", "peak RSS MiB (+Δ)",
          "parameters", "wall s", "published nats (ANCHORS.md)"]


def markdown(tier: str, device: str, records: list[dict], missing: list[str], command: str, about: str = "",
             needs: dict | None = None) -> str:
    """The table of the latest result per cell, with notes, footnotes and the machine facts.
    ``needs``: declared cells without a result that need another machine (id -> what it needs)."""
    footnotes: dict = {}
    lines = [f"# Test NLL benchmark: `{tier}` tier, {device}", "",
             f"Generated by `{command}` from `{tier}-{device}-*.jsonl` beside this file (the latest line per "
             "cell). Do not edit by hand.", ""] + ([about, ""] if about else []) + [

             "Nats per test image, every constant included. −ELBO: the mean of −log p(x, z_k)/q(z_k|x) over "
             "the K importance draws; NLL: −log (1/K) Σ p(x, z_k)/q(z_k|x) with K importance samples "
             "(the column gives K), an upper bound in expectation, ± the standard error over test images. "
             "Both from the checkpoint with the best validation ELBO (epoch in brackets).", "",
             "Cell ids read `data.network.guide[K flows][.ladder].objective[k]`; 8-bit data name their "
             "likelihood and its options after the dataset (`frey-categorical`, `mnist-dmol3`: a mixture of 3 "
             "discretized logistics), a residual network its channels, blocks and stride-2 stages "
             "(`resnet512-c128-b4-d2`); a network with several "
             "stochastic layers lists their sizes nearest x first (`z100-50`), then the hidden units of the "
             "MLPs between them (`lh100-100`) and `-bn` for batch norm; `.ladder`: ladder inference, otherwise "
             "bottom-up (active units then per layer in brackets). `binarized-mnist` is the static "
             "Larochelle–Murray binarization (its test split is sorted by label, so a subset is strided); "
             "`-dynamic` data resample the training pixels every time they are used, and their test split is "
             "binarized once with a fixed seed. Static and dynamic figures are never compared with each other.", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row(r, footnotes)) + " |" for r in records]
    needs = needs or {}
    waiting = [m for m in missing if m not in needs]
    if waiting:
        lines += ["", "Declared but not yet in the results: " + ", ".join(f"`{m}`" for m in waiting) + "."]
    for what in dict.fromkeys(needs.values()):
        cells = [m for m in missing if needs.get(m) == what]
        lines += ["", f"Declared for a machine with {what}, and skipped, with the reason, where the data are "
                      "absent: " + ", ".join(f"`{m}`" for m in cells) + "."]
    notes = []
    if any(exact_bits(r) for r in records):
        notes.append("bits/dim (8-bit cells: `categorical`, `dmol`, `dlogistic`, likelihoods over the 256 levels "
                     "of each pixel-channel): exact, nats / (D ln 2) with D = C·H·W (560 for Frey faces, 784 for "
                     "MNIST, 3072 for CIFAR-10), since these likelihoods give probabilities, not densities; ± the "
                     "standard error over test images, K the importance samples behind the NLL. Nats stay the "
                     "units of the other cells. Published bits/dim stand beside cells of the same data and "
                     "likelihood whatever their network, with the gap to ours; the footnotes name the networks.")
    if any(r.get("nll_bits_per_dim") is not None and not exact_bits(r) for r in records):
        notes.append("bits/dim marked ≈ (Gaussian cells): the decoder is a density on grey levels divided by "
                     f"{FREY_LEVEL_SCALE}, so bits/dim = (nats + D ln {FREY_LEVEL_SCALE}) / (D ln 2), D = pixels: "
                     "the density times the bin width, an approximation of the probabilities of the levels. Van den "
                     "Berg et al. 2018 report Frey faces with a 256-way categorical per pixel (−ELBO 4.53 bits/dim "
                     "without a flow), so those figures stand beside the exact 8-bit cells only (ANCHORS.md: van "
                     "den Berg et al. 2018).")
    if any(r["contended"] for r in records):
        notes.append("† other processes competed for the cores during this cell (its process got under 75% of "
                     "its threads' CPU time): seconds are then high and unsteady.")
    notes.append("s/epoch: wall seconds of one training pass plus the validation ELBO, from the run's "
                 "`metrics.jsonl`. Peak RSS: the process's high-water mark after the cell and how much this cell "
                 "raised it (0 when an earlier cell in the same process had used more). Parameters: model + "
                 "guide, each parameter once (a ladder guide shares the model's generative networks). Wall s: "
                 "training, evaluation and loading.")
    lines += [""] + [f"- {n}" for n in notes]
    if footnotes:
        lines += ["", "Published figures (nats, or bits/dim where marked; from `../shared/ANCHORS.md`, which lists "
                      "the settings):", ""]
        for key, n in footnotes.items():
            a = ANCHORS[key]
            extra = f"; {a.note}" if a.note else ""
            unit = " bits/dim" if a.in_bits else ""
            lines.append(f"{n}. {a.label}: {a.quantity} {a.bound + ' ' if a.bound else ''}{a.value:.2f}{unit}{extra} "
                         f"(ANCHORS.md: {a.source})")
    if records:
        latest = max(records, key=lambda r: r["finished"])
        facts = {**latest["machine"], "date": latest["date"], **latest["git"]}
        commits = sorted({r["git"]["commit"] or "unknown" for r in records})
        lines += ["", "| machine and software (latest cell) | |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in facts.items() if k != "process_cpu_seconds_per_wall_second"]
        if len(commits) > 1:
            lines += ["", f"Rows come from {len(commits)} commits ({', '.join(c[:10] for c in commits)}); each JSON "
                      "line records its own machine, versions and commit."]
    return "\n".join(lines) + "\n"
