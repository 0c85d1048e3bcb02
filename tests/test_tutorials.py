"""Every tutorial runs top to bottom with --quick and writes the figures it announces; every one is
a valid percent-format notebook (jupytext's `# %%` cells) that opens as a notebook."""

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "tutorials").glob("[0-9][0-9]_*.py"))
CELL = re.compile(r"^# %%(?P<markdown> \[markdown\])?(?:\s.*)?$")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_tutorials_found():
    assert TUTORIALS, f"no tutorials under {ROOT / 'tutorials'}"


def cells(path: Path) -> list[tuple[str, list[str]]]:
    """(kind, lines) per cell; lines before the first marker form a cell of kind "preamble"."""
    out = [("preamble", [])]
    for line in path.read_text().splitlines():
        match = CELL.match(line)
        if match:
            out.append(("markdown" if match.group("markdown") else "code", []))
        else:
            out[-1][1].append(line)
    return out if out[0][1] else out[1:]


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_percent_format(path):
    ast.parse(path.read_text(), filename=str(path))
    parsed = cells(path)
    assert parsed[0][0] == "markdown", f"{path.name} must open with a '# %% [markdown]' cell"
    code = [lines for kind, lines in parsed if kind == "code"]
    assert any(any(line.strip() and not line.startswith("#") for line in lines) for lines in code), \
        f"{path.name} has no code cells"
    for kind, lines in parsed:
        if kind == "markdown":
            stray = [line for line in lines if line.strip() and not line.startswith("#")]
            assert not stray, f"{path.name}: code inside a markdown cell: {stray[:2]}"


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_quick_run(path, tmp_path):
    out = tmp_path / path.stem[:2]
    proc = subprocess.run([sys.executable, str(path), "--quick", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{path.name} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    listing = out / "figures.json"
    assert listing.is_file(), f"{path.name} wrote no figures.json"
    figures = json.loads(listing.read_text())
    assert isinstance(figures, list) and figures, f"{path.name} announces no figures"
    for figure in figures:
        figure = Path(figure)
        assert figure.is_file(), f"{path.name} announced {figure} but did not write it"
        assert out.resolve() in figure.resolve().parents, f"{path.name} wrote {figure} outside --out"
        with open(figure, "rb") as f:
            assert f.read(8) == PNG_MAGIC, f"{figure} is not a PNG"
    listed = readme_figure(path)
    assert listed in {Path(f).name for f in figures}, f"the README shows {listed} for {path.name}, which it did not write"


def readme_figure(path: Path) -> str:
    """The figure the README's tutorial table names for ``path``."""
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("|") and f"tutorials/{path.name}" in line:
            match = re.search(r"`([\w.-]+\.png)`", line)
            assert match, f"the README's row for {path.name} names no figure"
            return match.group(1)
    raise AssertionError(f"the README's tutorial table has no row for {path.name}")
