# Quick start: `make demo` trains and evaluates a VAE on the embedded digits; `make test` runs the tests.
# Both create .venv on first use and reuse it afterwards.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-all install clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	rm -rf runs/demo
	$(BIN)/pyro-vae train --dataset digits --latent-dim 2 --epochs 200 --patience 25 --out runs/demo
	$(BIN)/pyro-vae evaluate runs/demo --iw-samples 2000

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf runs build *.egg-info
