"""The command line shared by the benchmarks of declared tiers (nll.py, semisupervised.py,
generative.py): their flags, their checks, one-line errors with exit code 2, torch threads per
tier, and the markdown of a table tier."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch

from pyro_vae.errors import PyroVAEError
from pyro_vae.io import write_text_atomic

class Parser(argparse.ArgumentParser):
    """A parser whose errors are ``PyroVAEError``s: ``cli`` prints them as one line and returns 2,
    like the package's CLI."""

    def error(self, message):
        raise PyroVAEError(message)


def tier_arguments(parser, tiers, force: str) -> None:
    """--tier, --device, --only and --force, the first flags of a benchmark of declared tiers."""
    parser.add_argument("--tier", required=True, help=f"one of {', '.join(tiers)}")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--only", type=lambda t: [s for s in t.split(",") if s],
                        help="run only cells whose id contains one of these comma-separated substrings")
    parser.add_argument("--force", action="store_true", help=force)


def work_arguments(parser, work: str, threads: str) -> None:
    """--work, --data-dir and --threads, the last flags of a benchmark of declared tiers."""
    parser.add_argument("--work", help=work)
    parser.add_argument("--data-dir", help="default $PYRO_VAE_DATA, else ../shared/data beside the repository")
    parser.add_argument("--threads", type=int, help=threads)


def table_tier_parser(script: str, doc: str, tiers, force: str, units: str) -> Parser:
    """The command line of a benchmark whose tier writes one markdown table from its results lines
    (semisupervised.py, generative.py): the flags above, ``--list`` and ``--out``."""
    parser = Parser(prog=script, description=doc.splitlines()[0], allow_abbrev=False)
    tier_arguments(parser, tiers, force)
    parser.add_argument("--list", action="store_true", help=f"print the tier's {units} and budgets, run nothing")
    parser.add_argument("--out", "--results", dest="out", default=str(Path(__file__).resolve().parent / "results"),
                        help="results folder (default benchmarks/results)")
    work_arguments(parser, f"run directories (default runs/bench/{Path(script).stem}-<tier>)",
                   "torch intra-op threads (default: the tier's)")
    return parser


def write_tier_markdown(results: Path, tier: str, device: str, tiers, table, script: str) -> Path:
    """``results/<name>.md`` of ``tier`` from the results files alone, by ``table`` (its
    ``read_records``, ``latest``, ``results_name`` and ``markdown``); the cpu tier's lists the paper
    tier as unmeasured."""
    records = table.latest(table.read_records(results, tier, device))
    path = results / f"{table.results_name(tier, device)}.md"
    write_text_atomic(path, table.markdown(tier, device, tiers[tier], records,
                                           f"python benchmarks/{script} --tier {tier} --device {device}",
                                           tiers["paper"] if tier == "cpu" else None))
    return path


def check_arguments(args, tiers) -> argparse.Namespace:
    """The flags of ``tier_arguments`` and ``work_arguments`` that argparse cannot check."""
    if args.tier not in tiers:
        raise PyroVAEError(f"unknown --tier {args.tier!r}; choose from {', '.join(tiers)}")
    if args.threads is not None and args.threads < 1:
        raise PyroVAEError(f"--threads must be a positive integer, got {args.threads}")
    if args.only is not None and not args.only:
        raise PyroVAEError("--only needs at least one substring")
    return args


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """torch's intra-op threads set to ``threads`` (None: left as they are) inside the block, then
    restored: main() may run inside another program, e.g. the tests."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cli(prog: str, parse, run, argv) -> int:
    """``run(parse(argv))``; a user error, or an OSError (an unwritable results or work folder, a
    full disk), prints one line ``<prog>: error: ...`` on stderr and returns 2."""
    try:
        return run(parse(argv))
    except PyroVAEError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"{prog}: error: {err.strerror or err}: {err.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2
