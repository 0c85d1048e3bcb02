"""What every tutorial script needs besides its lesson: command line, output folder, data, figures.

A tutorial is a plain script that also opens as a notebook (jupytext's ``# %%`` cells), so the
scaffolding lives here rather than in each lesson: ``--quick``/``--out`` parsed while tolerating
Jupyter's own arguments, MNIST found when present (else the bundled digits), every figure recorded
in ``figures.json`` so the tests can check that the lesson wrote what it announced.

Example::

    lesson = Lesson("08", "priors and conditioning")
    dataset, data_dir = lesson.dataset()
    run = pyro_vae.fit(RunConfig(dataset=dataset, data_dir=str(data_dir), out=lesson.fresh("vae")))
    lesson.figure(plots.image_grid(..., lesson.out / "samples.png"))
    lesson.save(fig, "curve.png")  # a matplotlib figure of the lesson's own
    lesson.finish()
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import pyro
import torch

from .data import MNIST_FILES, default_data_dir
from .io import write_text_atomic

QUICK_HELP = "small data and short training (under 2 minutes on a CPU)"


class Lesson:
    """One tutorial run: ``quick``, ``out`` (created), ``device``, and the figures written so far.

    Seeds Pyro, torch and numpy with ``seed`` so a lesson prints the same numbers every run. With
    ``--quick`` torch uses one thread: the small networks only lose time to intra-op threading.
    """

    def __init__(self, number: str, title: str, quick_help: str = QUICK_HELP, seed: int = 0):
        parser = argparse.ArgumentParser(description=f"Tutorial {number}: {title}")
        parser.add_argument("--quick", action="store_true", help=quick_help)
        parser.add_argument("--out", default=f"runs/tutorials/{number}", help="folder for runs and figures")
        args, _ = parser.parse_known_args()  # known args only: Jupyter passes its own
        self.quick: bool = args.quick
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.figures: list[str] = []
        if self.quick:
            torch.set_num_threads(1)
        pyro.set_rng_seed(seed)
        self._started = time.perf_counter()

    def figure(self, path) -> Path:
        """Record a written figure, print its path, and show it when running in a notebook."""
        self.figures.append(str(path))
        print("figure:", path)
        try:
            from IPython import get_ipython
            from IPython.display import Image, display
            if get_ipython() is not None:
                display(Image(str(path)))
        except ImportError:
            pass
        return Path(path)

    def save(self, fig, name: str, tight: bool = True) -> Path:
        """Write a matplotlib figure as ``out/name`` (see :func:`pyro_vae.plots.save_figure`), close
        it, and record it like :meth:`figure`."""
        from .plots import save_figure  # matplotlib loads only when a lesson draws

        return self.figure(save_figure(fig, self.out / name, tight))

    def fresh(self, name: str | Path) -> str:
        """The run directory ``out/runs/name``, emptied: ``fit`` refuses to overwrite a run, and a
        rerun of a lesson starts its runs afresh."""
        run_dir = self.out / "runs" / name
        if run_dir.exists():
            shutil.rmtree(run_dir)
        return str(run_dir)

    def dataset(self) -> tuple[str, Path]:
        """(dataset name, data folder): the bundled digits under ``--quick``; otherwise MNIST when its
        files are found, else the digits again, saying why.

        torchvision extracts MNIST's .gz files beside themselves on first use, so compressed files
        are copied into the output folder first: the shared data folder is never written to."""
        root = data_dir()
        raw = root / "MNIST" / "raw"
        if self.quick:
            print("dataset: digits (--quick)")
            return "digits", root
        if all((raw / n).is_file() for n in MNIST_FILES):
            print(f"dataset: mnist from {root}")
            return "mnist", root
        if all((raw / f"{n}.gz").is_file() for n in MNIST_FILES):
            mirror = self.out / "data"
            (mirror / "MNIST" / "raw").mkdir(parents=True, exist_ok=True)
            for n in MNIST_FILES:
                if not (mirror / "MNIST" / "raw" / f"{n}.gz").is_file():
                    shutil.copy(raw / f"{n}.gz", mirror / "MNIST" / "raw" / f"{n}.gz")
            print(f"dataset: mnist, from {raw} (copied to {mirror} to be extracted there)")
            return "mnist", mirror
        print(f"dataset: digits — MNIST was not found under {raw}, so the full run falls back to the 8x8 digits")
        return "digits", root

    def finish(self) -> None:
        """Write ``figures.json``, the list of figures this lesson announced, and the time taken."""
        write_text_atomic(self.out / "figures.json", json.dumps(self.figures, indent=2) + "\n")
        print(f"wrote {self.out / 'figures.json'} ({len(self.figures)} figures) "
              f"in {time.perf_counter() - self._started:.0f} s")


def data_dir() -> Path:
    """``$PYRO_VAE_DATA`` if set; else ``../shared/data`` beside the working directory or beside the
    repository holding this package, when one exists; else the suite's default ``./data``."""
    if os.environ.get("PYRO_VAE_DATA"):
        return Path(os.environ["PYRO_VAE_DATA"])
    for repo in (Path.cwd(), Path(__file__).resolve().parents[1]):
        candidate = repo.parent / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return default_data_dir()
