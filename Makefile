# Two commands on a fresh machine:
#   make demo   creates .venv, installs rlhfkit, runs the embedded demo (CPU, no network needed at run time)
#   make test   creates .venv, installs rlhfkit with its dev extras, runs the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch is pinned here, before anything can ask for it: an unpinned `torch` would pull the
# newest CUDA build (GBs). torch==2.13.0 resolves to the local CPU wheel on our machines.
TORCH  ?= torch==2.13.0

.PHONY: demo test install dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.dev: $(VENV)/.installed
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed
dev: $(VENV)/.dev

demo: install
	$(BIN)/rlhfkit demo

test: dev
	$(BIN)/python -m pytest tests -p no:cacheprovider --timeout 900

clean:
	rm -rf $(VENV) runs
