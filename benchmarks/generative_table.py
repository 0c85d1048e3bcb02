"""Published figures, the results files and the markdown of ``generative.py``.

Kept apart from the tiers and the runner: the tables are regenerated from the results files alone.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling modules, however this is run
import nll_table  # noqa: E402  (results-file reading, the latest line per row)
import throughput  # noqa: E402  (the machine facts table)

# ../shared/ANCHORS.md, "Hierarchical models and learned priors": dynamically binarized MNIST, one
# stochastic layer, MLP, z = 40, NLL with 5000 importance samples. Their MoG-prior figure is not in
# ANCHORS and could not be checked against the paper's table here, so it is not printed.
TOMCZAK = "Tomczak & Welling 2018 (VampPrior), arXiv:1705.07120, Table 2, via ../shared/ANCHORS.md"
PUBLISHED = {"standard": 88.56, "vamp": 85.57}
PUBLISHED_HIDDEN, PUBLISHED_LATENT, PUBLISHED_PSEUDO_INPUTS, PUBLISHED_IW = (300, 300), 40, 500, 5000

# the rows' kinds: a prior trained from scratch, a prior refitted to a trained run's codes, a second VAE
KINDS = ("prior", "refit", "two-stage")
TWO_STAGE_NLL = "n/a (two-stage: no joint density)"

ABOUT = {
    "smoke": "The pipeline on scikit-learn's 8x8 digits (1258 training images), tiny networks (one hidden layer of "
             "32, z = 4; VampPrior with 20 pseudo-inputs), 20 epochs of 128 at 1e-3, bounds with 50 importance "
             "samples on every test image, 300 samples and codes for the quality measures: seconds per row; no "
             "published figure has this setting.",
    "cpu": "The paper tier's networks (MLP 784-300-300-40, ReLU, diagonal Gaussian guide, Bernoulli pixels, "
           "dynamically binarized MNIST) with a budget a busy 2-core CPU finishes in about half an hour: 20 epochs "
           "of batches of 100 at Adam 1e-3 (the paper: up to 2000 at 5e-4) with a 1-epoch KL warm-up and no early "
           "stopping, one torch thread; test NLL with 1000 importance samples on every 10th test image (1000 "
           "images); quality with 10,000 samples against 10,000 test images and 2000 training codes over the "
           "aggregate posterior of all 50,000 training images (exact mixture). The two-stage second stage is "
           "40-300-300-300-40 (Dai & Wipf: three layers of 1024), 40 epochs (twice the first stage's, as their "
           "800 to 400) at 1e-3. Numbers this far from convergence rank the priors at an equal, small budget; "
           "they are not the paper's converged figures.",
    "paper": "The published budgets, for a GPU: Tomczak & Welling's code (jmtomczak/vae_vampprior, experiment.py): "
             "up to 2000 epochs with early stopping (patience 50), KL warm-up over 100 epochs, Adam at 5e-4, batch "
             "100, 500 pseudo-inputs, NLL with 5000 importance samples on every test image; the second stage as "
             "Dai & Wipf's code (daib13/TwoStageVAE, demo.py): three layers of 1024, 800 epochs of 64 at 1e-4.",
}


def published(tier, row) -> dict | None:
    """Tomczak & Welling's NLL for ``row`` of ``tier``: only a prior trained from scratch in their
    setting (dynamically binarized MNIST, MLP 300-300, z = 40; VampPrior with 500 pseudo-inputs)."""
    value = PUBLISHED.get(row.prior)
    if value is None or row.kind != "prior" or (tier.dataset, tier.binarize) != ("mnist", "dynamic"):
        return None
    if tuple(row.net.hidden) != PUBLISHED_HIDDEN or row.net.latent_dim != PUBLISHED_LATENT:
        return None
    if row.prior == "vamp" and dict(row.options).get("pseudo_inputs") != PUBLISHED_PSEUDO_INPUTS:
        return None
    return {"nll": value, "iw_samples": PUBLISHED_IW, "source": TOMCZAK}


# --- the results files --------------------------------------------------------------------------------

def results_name(tier: str, device: str) -> str:
    """The markdown's name (semisupervised.py's rule): ``generative-cpu`` for the cpu tier on a CPU."""
    return "generative-cpu" if tier == "cpu" and device == "cpu" else f"generative-{tier}-{device}"


def lines_name(tier: str, device: str) -> str:
    """The results lines' name, before ``-<date>.jsonl``: always ``generative-<tier>-<device>``."""
    return f"generative-{tier}-{device}"


def read_records(results: Path, tier: str, device: str) -> list[dict]:
    return nll_table.read_lines(nll_table.dated_files(results, lines_name(tier, device)))


latest = nll_table.latest


# --- markdown ---------------------------------------------------------------------------------------------

def _pm(value, se, digits: int = 2) -> str:
    if value is None:
        return "—"
    if se is None or not math.isfinite(se):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} ± {se:.{digits}f}"


def _pct(value, se) -> str:
    return "—" if value is None else _pm(100 * value, 100 * se, 1)


def _q(r: dict, key: str, digits: int = 2) -> str:
    q = r.get("quality", {})
    return _pm(q.get(key), q.get(key + "_se"), digits)


def _seconds(r: dict) -> str:
    own = f"{r['own_seconds']:.0f}"
    return own if r.get("source_train_seconds") is None else f"{own} (+{r['source_train_seconds']:.0f})"


def row_cells(r: dict) -> list[str]:
    """The main table's cells of one results line."""
    q = r["quality"]
    two = r["kind"] == "two-stage"
    pub = r.get("published")
    if two:
        nll_text, elbo_text = TWO_STAGE_NLL, "n/a"
    else:
        nll_text = f"{_pm(r['nll'], r['nll_se'])} ({r['iw_samples']}, {r['test']['n']})"
        elbo_text = _pm(r["neg_elbo"], r["neg_elbo_se"])
    mark = " ‡" if two else ""
    hole = _pct(q.get("prior_hole"), q.get("prior_hole_se")) + mark
    if two and r.get("composite_hole") is not None:
        c = r["composite_hole"]
        hole += f"; z: {_pct(c['fraction'], c['se'])}"
    fid = "—" if q.get("fid") is None else f"{q['fid']:.2f}"
    units = f"{r['active_units']}/{r['latent_dim']}{mark}"
    spe = " †" if r.get("contended") else ""
    return [f"`{r['id']}`", r["what"], nll_text, "—" if not pub else f"{pub['nll']:.2f}", elbo_text, fid,
            _q(r, "precision", 3), _q(r, "recall", 3), _q(r, "mutual_information") + mark,
            _q(r, "marginal_kl") + mark, hole, _pct(q.get("prior_hole_standard"), q.get("prior_hole_standard_se")),
            units, _seconds(r) + spe]


HEADER = ["row", "what", "test NLL ± se (K, images)", "Tomczak & Welling NLL", "test −ELBO ± se", "FID",
          "precision ± se", "recall ± se", "I(x;z) ± se", "KL(q(z)‖p(z)) ± se", "prior hole % ± se",
          "N(0, I) hole % ± se", "active units", "train s"]


def summary_lines(records: list[dict]) -> list[str]:
    """What the numbers show, computed from them, so that it stays true when the table is regenerated."""
    pixel = [r for r in records if r["kind"] != "two-stage" and r.get("nll") is not None]
    out = []
    by = {r["id"]: r for r in records}
    if pixel:
        best = min(pixel, key=lambda r: r["nll"])
        worst = max(pixel, key=lambda r: r["nll"])
        text = f"Lowest test NLL: `{best['id']}` ({best['nll']:.2f}); highest: `{worst['id']}` ({worst['nll']:.2f})."
        std = by.get("standard")
        if std is not None and std.get("nll") is not None:
            diffs = ", ".join(f"`{r['id']}` {r['nll'] - std['nll']:+.2f}" for r in pixel if r["id"] != "standard")
            if diffs:
                text += (f" NLL against `standard`, in nats: {diffs} (each row's ± of about {std['nll_se']:.1f} is "
                         "the spread over images; every row scores the same images, so differences are more precise "
                         "than that, but their paired error is not measured here).")
        out.append(text)
    scored = [r for r in records if r["quality"].get("fid") is not None]
    if scored:
        ranked = sorted(scored, key=lambda r: r["quality"]["fid"])
        out.append("FID, best first: " + ", ".join(f"`{r['id']}` {r['quality']['fid']:.2f}" for r in ranked) + ".")
    std = by.get("standard")
    pixel_mi = [r for r in records if r["kind"] != "two-stage" and r["quality"].get("mutual_information") is not None]
    if pixel_mi:
        n = pixel_mi[0]["quality"]["surgery"]["train_images"]
        cap = math.log(n)
        top = max(r["quality"]["mutual_information"] for r in pixel_mi)
        if top > 0.8 * cap:
            out.append(f"I(x;z) cannot exceed log N = {cap:.2f} nats (N = {n:,} training images make q(z)), and the "
                       f"pixel rows reach up to {top:.2f}: their posteriors barely overlap, so q(z) is a mixture of "
                       "nearly disjoint narrow bumps and any smooth prior's draws mostly fall between them; the hole "
                       "(a prior equal to q(z) would score 1%) then saturates, and only the differences between rows "
                       "carry information.")
    if std is not None and std["quality"].get("prior_hole") is not None:
        text = (f"The standard prior's hole: {100 * std['quality']['prior_hole']:.1f}% of N(0, I) draws land where "
                "q(z) is below its 1st percentile over training codes.")
        own = [r for r in records if r["quality"].get("prior_hole_standard") is not None]
        if own:
            text += " Learned or refitted priors, own draws vs N(0, I) draws under the same q(z): " + ", ".join(
                f"`{r['id']}` {100 * r['quality']['prior_hole']:.1f}% vs "
                f"{100 * r['quality']['prior_hole_standard']:.1f}%"
                for r in own) + "."
        two = by.get("two-stage")
        if two is not None and two.get("composite_hole") is not None:
            text += (f" The two-stage model's generated codes z (u ~ N(0, I) through the second stage) fall in the "
                     f"first stage's hole {100 * two['composite_hole']['fraction']:.1f}% of the time.")
        out.append(text)
    two = by.get("two-stage")
    if two is not None and two["active_units"] == 0:
        fid = two["quality"].get("fid")
        out.append("The two-stage row's second stage collapsed (no active unit, I(u; z) "
                   f"{two['quality'].get('mutual_information', float('nan')):.2f}): p(z|u) ignores u, so the mean of "
                   "p(z|u) that `pyro_vae.two_stage` decodes is one code for every u, and all its samples are "
                   "Bernoulli draws around a single image"
                   + (f" (FID {fid:.2f}, recall {two['quality']['recall']:.3f})" if fid is not None else "")
                   + ". Dai & Wipf's second stage learns one shared decoder variance γ that goes to 0, which "
                   "makes the mean a sample; the suite's Gaussian decodes a scale per dimension and can settle on a "
                   "diagonal Gaussian fit of the codes instead.")
    refits = [r for r in records if r["kind"] == "refit"]
    if std is not None and refits and std["quality"].get("mutual_information") is not None:
        out.append("The refitted rows keep the standard run's encoder and decoder, so their I(x;z) is the standard "
                   f"run's ({std['quality']['mutual_information']:.2f}: " + ", ".join(
                       f"`{r['id']}` {r['quality']['mutual_information']:.2f}" for r in refits)
                   + ") and only KL(q(z)‖p(z)) moves: " + ", ".join(
                       f"`{r['id']}` {r['quality']['marginal_kl']:.2f}" for r in refits)
                   + f" against {std['quality']['marginal_kl']:.2f}.")
    return out


def detail_lines(spec, records: dict) -> list[str]:
    order = {row.id: n for n, row in enumerate(spec.rows)}
    rows = sorted(records.values(), key=lambda r: order.get(r["id"], 1e9))
    lines = ["Per row:", "", "| row | trained | epochs (best) | s/epoch | train s | eval s | quality s | parameters "
             "| details |", "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        b = r.get("budget")
        trained = "—" if b is None else f"{b['epochs']} epochs of {b['batch_size']} at {b['lr']:g}, warm-up " \
                                        f"{b['warmup_epochs']}, {b['objective']}"
        epochs = "—" if r.get("epochs") is None else f"{r['epochs']} ({r['best_epoch']})"
        spe = "—" if r.get("seconds_per_epoch") is None else f"{r['seconds_per_epoch']:.1f}"
        details = ""
        if r["kind"] == "refit":
            f = r["refit"]["log_density_per_code"]
            details = (f"{r['refit']['density']} fitted to {r['refit']['codes']['train']:,} training codes of "
                       f"`{r['source']}` in {r['own_seconds']:.0f} s: log density {f['train']:.2f} per code "
                       f"(validation {f['valid']:.2f})")
        elif r["kind"] == "two-stage":
            c = r["code_space"]
            details = (f"second stage on `{r['source']}`'s posterior codes ({r['codes']['rows']:,} rows, "
                       f"{r['codes']['dims']} dims, encoded in {r['codes']['seconds']:.1f} s): code-space −ELBO "
                       f"{_pm(c['neg_elbo'], c['neg_elbo_se'])}, NLL {_pm(c['nll'], c['nll_se'])} (K = "
                       f"{c['iw_samples']}, {c['n']} test codes, nats per {r['codes']['dims']}-dim code, Gaussian "
                       "density: not comparable with pixel NLLs)")
        train = "—" if r.get("train_seconds") is None else f"{r['train_seconds']:.0f}"
        lines.append(f"| `{r['id']}` | {trained} | {epochs} | {spe} | {train} | "
                     f"{r['eval_seconds']:.0f} | {r['quality_seconds']:.0f} | {r['parameters']:,} | {details} |")
    return lines


NOTES = [
    "Notes:",
    "",
    "- NLL: −log p(x) estimated with K importance samples through the row's own guide (`pyro_vae.evaluate`), nats "
    "per binarized test image (the suite's fixed binarization of the test split), ± the standard error over the "
    "images scored. A refitted row is a different model (the standard run's decoder and encoder with the fitted "
    "density as prior), bounded with the same guide as proposal. The two-stage model p(x) = ∫ p(x|z) p(z|u) p(u) "
    "has no tractable joint density with the first stage's encoder as proposal here, so no pixel NLL or ELBO is "
    "given; its second stage's own code-space bound is in the per-row table.",
    "- FID, precision and recall (Kynkäänniemi et al. 2019, k = 3) of model samples (Bernoulli draws of p(x|z)) "
    "against test images, in the suite's own feature space (the shipped `mnist-cnn-v1` net for MNIST, "
    "`digits-cnn-v1` for the digits): **not comparable with the Inception FIDs of papers** (Ghosh et al. 2019, "
    "Dai & Wipf 2019), only between the rows of tables that name the same feature net.",
    "- ELBO surgery (Hoffman & Johnson 2016): the KL term = I(x;z) + KL(q(z)‖p(z)), with q(z) the aggregate "
    "posterior over the training images, from training codes (`pyro_vae.quality`). Prior hole: the share of "
    "prior draws where q(z) is below the 1st percentile of its values at training codes; for a learned prior "
    "also the share of N(0, I) draws (the column \"N(0, I) hole\"), which the standard prior would have sampled.",
    "- ‡ two-stage: I(x;z), KL(q(z)‖p(z)), the prior hole and the active units are the second stage's, in code "
    "space (u given the first stage's codes); \"z:\" is the share of the composite prior's codes (u ~ N(0, I), "
    "z ~ p(z|u)) in the first stage's hole, comparable with `standard`'s own hole.",
    "- Tomczak & Welling NLL: their converged figure (up to 2000 epochs, K = 5000 on every test image, gated "
    "layers), shown beside the rows of their setting as the paper tier's reference, not as a target for a short run.",
    "- A refit draws the codes it fits from a random stream of its own (derived from its seed), never the one "
    "`quality` draws from at the same seed: were the draws of q(z|x) to repeat, the density would be scored, in "
    "collapsed dimensions (where z is that noise), on the very points it was fitted to, and KL(q(z)‖p(z)) would "
    "come out low (negative on the digits, before the streams were separated).",
    "- train s: this row's own work (training; for a refit the density fit; for two-stage encoding plus the "
    "second stage's training) and, in brackets, the training of the run it remedies.",
    "- How the rows differ from the papers: the suite's MLPs are ReLU layers where Tomczak & Welling use gated "
    "dense layers (GatedDense) and He initialisation; their log-variance heads are hardtanh-clipped, the suite's "
    "scales softplus above 0.01; their optimizer is AdamNormGrad, the suite's Adam; their early stopping does not "
    "count warm-up epochs, the suite's counts every epoch; every row here uses the Monte-Carlo KL (`elbo`), as "
    "their code does for every prior. The MoG prior (10 diagonal components, learned) and the RealNVP prior "
    "(4 affine couplings) have no figure in ANCHORS, and their MoG figure could not be confirmed, so none is shown. "
    "The refits follow Ghosh et al. 2019 (ex-post density estimation: a 10-component full-covariance GMM by EM) "
    "and Xu et al. 2019 (a RealNVP fitted by maximum likelihood); Dai & Wipf's second stage learns one shared "
    "decoder variance γ and halves its learning rate every 300 epochs, the suite's Gaussian decodes a scale per "
    "dimension at a constant rate.",
]


def unmeasured_lines(paper, records: dict) -> list[str]:
    """The ``paper`` tier, declared and not run here, with a rough CPU cost from this tier's epochs."""
    lines = ["", f"Left unmeasured: the whole `paper` tier ({len(paper.rows)} rows, for a GPU). Its budgets, and a "
             "rough upper bound on CPU hours per row here (this tier's seconds per epoch times the paper's most "
             "epochs, before early stopping, one thread):", "",
             "| paper-tier row | network | epochs (patience) | batch | lr | warm-up | K | est. CPU hours |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in paper.rows:
        r = records.get(row.id)
        b, net = row.budget, row.net
        if b is None:
            lines.append(f"| `{row.id}` | the `{row.source}` run's | — | — | — | — | {paper.iw_samples} "
                         "| — |")
            continue
        est = "—"
        if r is not None and r.get("seconds_per_epoch"):
            hours = r["seconds_per_epoch"] * b.epochs / 3600
            est = f"{hours:.0f}" if hours >= 10 else f"{hours:.1f}"
            if row.kind == "two-stage":  # measured on this tier's narrower second stage
                est = f"> {est}"
        k = "—" if row.kind == "two-stage" else paper.iw_samples
        lines.append(f"| `{row.id}` | {'-'.join(map(str, net.hidden))}, z {net.latent_dim} | {b.epochs} "
                     f"({b.patience}) | {b.batch_size} | {b.lr:g} | {b.warmup_epochs} | {k} | {est} |")
    return lines


def markdown(tier: str, device: str, spec, records: dict, command: str, unmeasured=None) -> str:
    """The tables of ``records`` (row id -> latest line) of the tier ``spec``, with notes and the
    machine facts; ``unmeasured``, a tier declared and not run here, is listed with estimated costs."""
    order = {row.id: n for n, row in enumerate(spec.rows)}
    rows = sorted(records.values(), key=lambda r: order.get(r["id"], 1e9))
    features = sorted({r["quality"]["features"]["name"] for r in rows if r["quality"].get("features")})
    ran = sorted({r["command"] for r in rows if r.get("command")})
    lines = [f"# Priors and prior-hole remedies: `{tier}` tier, {device}", "",
             f"Generated by `{command}` from `{lines_name(tier, device)}-*.jsonl` beside this file (the latest line "
             "per row). Do not edit by hand." + ("" if not ran else " The rows were measured by " + ", ".join(
                 f"`{c}`" for c in ran) + "."), "", spec.about, "",
             "Rows: four priors trained from scratch at one budget (`standard` N(0, I), `mog` a learned mixture of "
             "Gaussians, `vamp` the VampPrior, `realnvp` a learned flow), then three remedies applied to the "
             "trained `standard` run: a full-covariance GMM and a RealNVP refitted to its training codes "
             "(`refit-prior`), and a second VAE on its posterior codes (`two-stage`, Dai & Wipf 2019). Best epoch by "
             "validation ELBO. FIDs in the feature space of " + (", ".join(f"`{f}`" for f in features) or "—")
             + ", not comparable with Inception FIDs in papers.", "",
             "| " + " | ".join(HEADER) + " |", "|---|---|" + "---:|" * (len(HEADER) - 2)]
    lines += ["| " + " | ".join(row_cells(r)) + " |" for r in rows]
    summary = summary_lines(rows)
    if summary:
        lines += ["", "What the numbers show: " + " ".join(summary)]
    lines += ["", *detail_lines(spec, records)]
    missing = [row for row in spec.rows if row.id not in records]
    if missing:
        lines += ["", "Declared in this tier but not in the results: " + ", ".join(f"`{r.id}`" for r in missing) + "."]
    lines += ["", *NOTES]
    if unmeasured is not None:
        lines += unmeasured_lines(unmeasured, records)
    if rows:
        newest = max(rows, key=lambda r: r["finished"])
        lines += throughput.facts_lines(newest)
        if any(r.get("contended") for r in rows):
            lines += ["", "† other processes competed for the cores during this row (its process got under 75% of "
                      "its threads' CPU time): seconds are then high and unsteady."]
    return "\n".join(lines) + "\n"


def tier_lines(spec) -> list[str]:
    """The tier's rows with their networks and budgets, one line each (``--list``)."""
    lines = []
    for row in spec.rows:
        opts = ", ".join(f"{k} {v}" for k, v in row.options)
        head = f"{row.id}: {row.kind}, prior {row.prior}" + (f" ({opts})" if opts else "")
        if row.source:
            head += f", on the {row.source} run"
        if row.budget is not None:
            b = row.budget
            head += (f"; hidden {list(row.net.hidden)}, z {row.net.latent_dim}, {b.epochs} epochs, batch "
                     f"{b.batch_size}, lr {b.lr:g}, warm-up {b.warmup_epochs}, patience {b.patience}")
        lines.append(head)
    lines.append(f"bounds: K {spec.iw_samples}, test[::{spec.test_stride}]; quality: {spec.samples} samples, "
                 f"{spec.codes} codes, mixture {'all' if spec.mixture is None else spec.mixture}")
    return lines
