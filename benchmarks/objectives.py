"""The analytic KL (``meanfield``, the default for Gaussian guides) against the Monte-Carlo KL
(``elbo``): the same diagonal-Gaussian VAE trained twice, the estimator of the KL term the only
difference.

Static binarized MNIST, 784-400-400-40 (ReLU), batch 100, Adam 1e-3, 10 epochs, seed 0; test
ELBO and NLL with 1000 importance samples on the class-balanced ``test[::5]`` (the test split is
sorted by label), nats per image. Writes ``objectives-<device>-<date>.json`` into ``--out``.

    python benchmarks/objectives.py [--data-dir ../shared/data] [--epochs 10] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import pyro
import torch

from pyro_vae import RunConfig, fit
from pyro_vae.evaluate import evaluate
from pyro_vae.io import write_text_atomic
from pyro_vae.run import load_data, load_run, resolve_device

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import facts  # noqa: E402

OBJECTIVES = ("meanfield", "elbo")
KEYS = ("elbo", "elbo_se", "nll", "nll_se", "kl", "active_units", "latent_dim", "n")


def main(argv=None) -> int:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("PYRO_VAE_DATA", str(here.parent.parent / "shared" / "data")))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--iw-samples", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(here / "results"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    load_before, started, cpu_before = os.getloadavg()[0], time.perf_counter(), time.process_time()
    rows = {}
    with tempfile.TemporaryDirectory() as work:
        for objective in OBJECTIVES:
            config = RunConfig(dataset="binarized-mnist", data_dir=args.data_dir, hidden=[400, 400], latent_dim=40,
                               batch_size=100, epochs=args.epochs, patience=args.epochs, objective=objective, seed=0,
                               device=args.device, out=str(Path(work) / objective))
            t = time.perf_counter()
            run = load_run(fit(config, progress=False), device)
            x = load_data(run.config).observations("test", device)[::5]
            pyro.set_rng_seed(0)
            result = evaluate(run.pair.model, run.pair.guide, x, iw_samples=args.iw_samples)
            rows[objective] = {**{k: result[k] for k in KEYS}, "seconds": time.perf_counter() - t}
            print(f"{objective:9s} ELBO {result['elbo']:8.2f} ± {result['elbo_se']:.2f}  NLL {result['nll']:7.2f} ± "
                  f"{result['nll_se']:.2f} (K={args.iw_samples})  active units {result['active_units']}/40", flush=True)
    busy = (time.process_time() - cpu_before) / (time.perf_counter() - started)
    report = {"setting": {"dataset": "binarized-mnist", "network": "784-400-400-40 relu", "batch_size": 100,
                          "epochs": args.epochs, "lr": 1e-3, "seed": 0, "test": "test[::5]",
                          "iw_samples": args.iw_samples},
              "rows": rows, **facts(device, load_before, busy)}
    path = Path(args.out) / f"objectives-{device.type}-{report['date']}.json"
    write_text_atomic(path, json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
