"""Published figures and the sources' settings, the results files and the markdown of ``semisupervised.py``.

Kept apart from the tiers and the runner: the tables are regenerated from the results files alone.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling modules, however this is run
import nll_table  # noqa: E402  (results-file reading, the latest line per cell)
import throughput  # noqa: E402  (the machine facts table)

KINGMA = "Kingma et al. 2014, arXiv:1406.5298, Table 1"
PYRO_EXAMPLE = "Pyro, examples/vae/ss_vae_M2.py"
# ../shared/ANCHORS.md, "Semi-supervised MNIST": test error % (mean, sd over runs) by number of labels
PUBLISHED = {
    "m2": {100: (11.97, 1.71), 600: (4.94, 0.13), 1000: (3.60, 0.56), 3000: (3.92, 0.63)},
    "m1m2": {100: (3.33, 0.14), 600: (2.59, 0.05), 1000: (2.40, 0.02), 3000: (2.18, 0.04)},
}
MODEL_NAMES = {"m2": "M2", "m1m2": "M1+M2"}

# Pyro's example adds, on every labelled batch, aux_multiplier * sum over the batch's rows of
# -log q(y|x) (pyro.poutine.scale on an observed y_aux site), and each labelled image is in one
# labelled batch per epoch; its ELBO terms are sums over the batch too, one per image per epoch.
# Per pass over the data it therefore adds aux_multiplier * sum_l -log q(y|x) = aux_multiplier *
# N_l * E_l[-log q(y|x)] to the negative ELBO summed over all N images. The suite's J_alpha has
# alpha * E_l[log q(y|x)] (the MEAN over the labelled images) beside the same sums, so the same
# objective is alpha = aux_multiplier * N_l: 46 * 3000 = 138,000 = 2.76 N_train, where Kingma et
# al.'s alpha = 0.1 N_train = 5,000 (their code: beta = alpha * N / N_l per labelled row, alpha 0.1).
PYRO_AUX_MULTIPLIER = 46.0


def pyro_alpha(labelled: int) -> float:
    return PYRO_AUX_MULTIPLIER * labelled


# What each tier is for, printed above its tables (``--list`` prints the budgets of its cells).
ABOUT = {
    "smoke": "The pipeline on scikit-learn's 8x8 digits (1258 training images, 50 labelled), seconds per cell; no "
             "published figure has this setting.",
    "cpu": "The paper tier's networks and objective with budgets a busy 2-core CPU finishes in about ten minutes: "
           "seed 0 only; 100 and 1000 labels; M2 3 epochs and M2 on the M1 codes 8 epochs, batches of 500 with "
           "50 labelled rows (share 0.1, not Kingma's N_l / N: with a few epochs the labelled images would be "
           "seen only a few times), Adam at 1e-3; M1 5 epochs of 500 images at 1e-3; Pyro's example cell with "
           "its own batch, share and learning rate for 2 of its 50 epochs; one torch thread; bounds with 100 "
           "importance samples on every 10th test image. Errors this far from convergence say that the pipeline "
           "works and what it costs, not how close the suite comes to the paper.",
    "paper": "The published budgets, for a GPU: 3000 epochs per M2 (Kingma's README: \"each experiment will run "
             "for 3000 epochs\"), Adam at 3e-4 with beta1 0.9, beta2 0.999 (their learn_yz_x_ss.py), Kingma's batch "
             "composition (the training set in 200 minibatches, 100 for 100 labels, "
             "each with N_l / N of its rows labelled), three seeds per label count; M1 784-600-600-50 softplus, "
             "3000 epochs of 1000 images at 3e-4; Pyro's example as it ships (50 epochs); 5000 importance "
             "samples on the whole test split.",
}


def published(cell) -> dict | None:
    """Kingma et al.'s figure for the cell's model and label count, on MNIST only."""
    figure = PUBLISHED.get(cell.model, {}).get(cell.labelled)
    if figure is None or cell.dataset != "mnist":
        return None
    return {"error_pct": figure[0], "sd_pct": figure[1], "source": KINGMA}


# --- the results files --------------------------------------------------------------------------------

def results_name(tier: str, device: str) -> str:
    return "semisupervised-cpu" if tier == "cpu" and device == "cpu" else f"semisupervised-{tier}-{device}"


def read_records(results: Path, tier: str, device: str) -> list[dict]:
    return nll_table.read_lines(nll_table.dated_files(results, results_name(tier, device)))


latest = nll_table.latest


# --- markdown ---------------------------------------------------------------------------------------------

_pm = nll_table._pm


def _mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return _pm(statistics.mean(values), statistics.stdev(values))


def markdown(tier: str, device: str, spec, records: dict, command: str, unmeasured=None) -> str:
    """The tables of ``records`` (cell id -> latest line) of the tier ``spec``, with notes and the
    machine facts; ``unmeasured``, a tier declared and not run here, is listed with estimated costs."""
    cells = [r for r in records.values() if r.get("kind") == "cell"]
    lines = [f"# Semi-supervised MNIST: `{tier}` tier, {device}", "",
             f"Generated by `{command}` from `{results_name(tier, device)}-*.jsonl` beside this file (the latest line "
             "per cell). Do not edit by hand.", "", spec.about, "",
             "Test error: argmax q(y|x) of the best epoch by validation ELBO (never by validation error, which would "
             "spend the validation labels) on every test image, in %; mean ± sd over the seeds run (one seed: "
             "the value). Beside it Kingma et al. 2014, Table 1 (`../shared/ANCHORS.md`), mean ± sd over their runs "
             "after 3000 epochs. Bounds: nats, −ELBO and the K-sample NLL with the label summed out exactly "
             "(`pyro_vae.evaluate`), ± the standard error over the test images scored; M2 on pixels bounds log p(x) "
             "of a binarized image, M2 on the M1 codes bounds the Gaussian density of a code, so the two are not "
             "comparable. s/epoch: one pass over the unlabelled images plus the validation ELBO and error.", "",
             "| model | family | labels | seeds | test error % | Kingma et al. % | epochs | s/epoch | −ELBO ± se "
             "| NLL ± se (K, images) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    groups: dict = {}
    for c in spec.cells:
        groups.setdefault(c.group, [])
    for r in cells:
        groups.setdefault((r["family"], r["model"], r["labelled"]), []).append(r)
    for (family, model, labelled), rs in groups.items():
        if not rs:
            continue
        rs = sorted(rs, key=lambda r: r["seed"])
        pub = PUBLISHED.get(model, {}).get(labelled) if rs[0]["published"] else None
        errors = [100 * r["test_error"] for r in rs]
        elbo = " / ".join(_pm(r["neg_elbo"], r["neg_elbo_se"]) for r in rs)
        nll_text = " / ".join(f"{_pm(r['nll'], r['nll_se'])} ({r['iw_samples']}, {r['n']})" for r in rs)
        seeds = ", ".join(str(r["seed"]) for r in rs)
        epochs = " / ".join(f"{r['epochs']} ({r['best_epoch']})" for r in rs)
        spe = " / ".join(f"{r['seconds_per_epoch']:.1f}" + (" †" if r["contended"] else "") for r in rs)
        lines.append(f"| {MODEL_NAMES[model]} | {family} | {labelled} | {seeds} | {_mean_sd(errors)} "
                     f"| {_pm(*pub) if pub else '—'} | {epochs} | {spe} | {elbo} | {nll_text} |")
    m1 = [r for r in records.values() if r.get("kind") == "m1"]
    if m1:
        r = m1[-1]
        c = r["codes"]
        lines += ["", f"M1 (`{r['id']}`, shared by the M1+M2 cells): {r['epochs']} epochs (best {r['best_epoch']}), "
                  f"{r['seconds_per_epoch']:.1f} s/epoch, test −ELBO {_pm(r['neg_elbo'], r['neg_elbo_se'])}, NLL "
                  f"{_pm(r['nll'], r['nll_se'])} (K = {r['iw_samples']}, {r['n']} images, nats per binarized image); "
                  f"{c['rows']:,} posterior means encoded in {r['encode_seconds']:.1f} s, {c['dims_kept']} of "
                  f"{c['dims']} code dimensions kept"
                  + (" (all: no selection)." if c["keep_sd"] is None else
                     f" (standard deviation of the mean over the training split > {c['keep_sd']}).")]
    lines += ["", "Per cell:", "", "| cell | test error % (last epoch) | valid error % (best epoch) | alpha "
              "| labelled + unlabelled rows per batch | steps/epoch | train s | eval s | parameters |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    order = {c.id: n for n, c in enumerate(spec.cells)}
    for r in sorted(cells, key=lambda r: order.get(r["id"], 1e9)):
        valid = r["valid_error_best_epoch"]
        lines.append(f"| `{r['id']}` | {100 * r['test_error']:.2f} ({100 * r['test_error_last_epoch']:.2f}) "
                     f"| {'—' if valid is None else f'{100 * valid:.2f}'} | {r['alpha']:,.0f} "
                     f"| {r['labelled_batch']} + {r['unlabelled_batch']} | {r['steps_per_epoch']} "
                     f"| {r['train_seconds']:.0f} | {r['eval_seconds']:.0f} | {r['parameters']['total']:,} |")
    missing = [c for c in spec.cells if c.id not in records]
    if missing:
        lines += ["", "Declared in this tier but not in the results: " + ", ".join(f"`{c.id}`" for c in missing) + "."]
    lines += ["", *NOTES]
    if unmeasured is not None:
        lines += ["", *unmeasured_lines(unmeasured, cells, m1[-1] if m1 else None)]
    if cells or m1:
        newest = max(cells + m1, key=lambda r: r["finished"])
        lines += throughput.facts_lines(newest)
        if any(r["contended"] for r in cells):
            lines += ["", "† other processes competed for the cores during this cell (its process got under 75% of "
                      "its threads' CPU time): seconds are then high and unsteady."]
    return "\n".join(lines) + "\n"


NOTES = [
    "How the cells differ from the sources:",
    "",
    "- Kingma et al.: M1 is 784-600-600-50 as the paper's text says (their released M1 for MNIST, "
    "`models/mnist_z_x_50-500-500_longrun`, is 500-500); M2 has one hidden layer of 500 softplus units and "
    "z = 50 (300 units for M1+M2 with 100 labels, as `run_2layer_ssl.py`), alpha = 0.1 N_train = 5,000. Their "
    "code trains M2 on a fresh draw z ~ q(z|x) of M1 in every minibatch and puts a N(0, I) prior on the weights "
    "(MAP), initialised from N(0, 0.001²); here M2 trains on the fixed posterior means (`encode`, what=\"mean\"), "
    "without a weight prior, from torch's initialisation. The dimension rule (sd of the mean > 0.1) is theirs. "
    "Their M1 saw grey levels re-binarized per batch; here M1 is trained the same way (dynamic binarization) and "
    "the codes are the means of one fixed binarization of each split (what `encode` reads).",
    f"- Pyro's example (`{PYRO_EXAMPLE}`, defaults: `-n 50 -alm 46 -enum parallel -sup 3000 -zd 50 -hl 500 "
    "-lr 0.00042 -b1 0.9 -bs 200`, with `--aux-loss`): its Bernoulli likelihood scores grey levels in [0, 1]; "
    "here the pixels are binarized dynamically (the suite's Bernoulli needs binary data). It takes pure labelled "
    "batches (15 of the 250 per epoch with 3000 labels) and pure unlabelled ones, each its own Adam step (the "
    "auxiliary loss a second step on the same labelled batch); here every batch of 200 holds 12 labelled rows "
    "(share 0.06, the same proportion) and one step takes the sum. Its q(z|x, y) joins one-hot y to the pixels at "
    "the input, the suite's to the encoder's hidden features; its classifier scale uses Exp where the suite uses "
    "softplus above --min-scale. Adam's beta1 is 0.9 in both (the suite does not set betas: torch's 0.9, 0.999).",
    "- alpha from Pyro's multiplier: Pyro adds 46 × Σ −log q(y|x) over each labelled batch, so 46 × N_l × "
    "E_l[−log q(y|x)] per pass over the data, beside the ELBO terms summed over all images; the suite's J_alpha "
    "has alpha × E_l[log q(y|x)], the mean over the labelled images, beside the same sums, so alpha = 46 × N_l = "
    "138,000 for 3000 labels (2.76 N_train, 27.6 times Kingma's 0.1 N_train).",
    "- Every cell: diagonal Gaussian q(z|x, y), the labelled rows' bound with the analytic KL (`meanfield`), "
    "the unlabelled rows' `TraceEnum_ELBO` with y enumerated; Adam as the suite builds it; no early stopping.",
]


def unmeasured_lines(paper, cells: list[dict], m1_record: dict | None) -> list[str]:
    """The tier ``paper``, declared and not run here, with each cell's budget and a rough cost on this
    machine from the measured lines ``cells`` and ``m1_record``."""
    lines = [f"Left unmeasured: the whole `paper` tier (below), {len(paper.cells)} runs and their M1. There is no GPU "
             "here, and its budgets are the paper's: 3000 epochs per Kingma-family M2 run, 3-6×10⁵ steps. The last "
             "column is a rough cost per run "
             "on this CPU: the seconds per training row measured in this tier (epoch time over rows per epoch, "
             "validation included) times the paper cell's rows, so it ignores the effect of batch size on speed. "
             "Also the cpu tier's own gaps: 600 and 3000 labels for the Kingma family, seeds 1 and 2, and every "
             "epoch beyond its few.", "",
             "| paper-tier cells | seeds | epochs | batch (labelled rows) | steps | lr | alpha | est. CPU hours each |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    groups: dict = {}
    for c in paper.cells:
        groups.setdefault(c.group, []).append(c)
    for (family, model, labelled), cs in groups.items():
        c = cs[0]
        labelled_rows = min(labelled, max(1, round(c.labelled_share * c.batch_size)))
        unlabelled = 50000 - labelled
        steps = c.epochs * (unlabelled // (c.batch_size - labelled_rows))
        est = "—"
        rows = [r for r in cells if (r["family"], r["model"]) == (family, model)]
        if rows:  # seconds per training row measured in this tier, times the paper cell's rows
            per_row = statistics.median(r["seconds_per_epoch"] / (r["steps_per_epoch"] * (r["labelled_batch"] +
                                                                                        r["unlabelled_batch"]))
                                        for r in rows)
            hours = per_row * steps * c.batch_size / 3600
            est = f"{hours:.0f}" if hours >= 10 else f"{hours:.1f}"
        alpha = f"{c.alpha:,.0f}" if c.alpha is not None else "0.1 N = 5,000"
        lines.append(f"| {MODEL_NAMES[model]} {family} {labelled} labels | {', '.join(str(x.seed) for x in cs)} "
                     f"| {c.epochs} | {c.batch_size} ({labelled_rows}) | {steps:,} | {c.lr:g} | {alpha} | {est} |")
    m1 = paper.m1
    est = "" if m1_record is None else \
        f" (about {m1_record['seconds_per_epoch'] * m1.epochs / 3600:.0f} CPU hours at this tier's M1 s/epoch)"
    lines += ["", f"Paper-tier M1 (`{m1.id}`): {m1.epochs} epochs of {m1.batch_size} images at {m1.lr:g}{est}; 5000 "
              "importance samples on every test image for every cell's bounds."]
    return lines



def tier_lines(spec) -> list[str]:
    """The tier's M1 and cells with their budgets, one line each (``--list``)."""
    lines = []
    if spec.m1:
        m = spec.m1
        lines.append(f"{m.id}: {m.epochs} epochs, batch {m.batch_size}, lr {m.lr:g}, K {m.iw_samples}, "
                     f"test[::{m.test_stride}]")
    for c in spec.cells:
        alpha = "0.1 N" if c.alpha is None else f"{c.alpha:g}"
        lines.append(f"{c.id}: hidden {list(c.hidden)} {c.activation}, z {c.latent_dim}, {c.epochs} epochs, batch "
                     f"{c.batch_size} (labelled share {c.labelled_share:g}), lr {c.lr:g}, alpha {alpha}, "
                     f"K {c.iw_samples}, test[::{c.test_stride}]")
    return lines
