# objdetect: `make serve` and `make test` are the two commands; the rest are their parts.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

MODEL ?=
WEIGHTS ?=
LABELS ?=
NAME ?= detector
VERSION ?= 1.0
INFERENCE_PORT ?= 8080
MANAGEMENT_PORT ?= 8081
METRICS_PORT ?= 8082

.PHONY: setup serve mar test train-embedded clean

setup: $(INSTALLED)

# The venv in the checkout, with the pinned dependencies; redone when pyproject.toml changes.
$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --no-cache-dir -e '.[dev]'
	touch $@

# Builds the archive into model_store/, serves it on 127.0.0.1 until Ctrl-C (or SIGTERM).
serve: $(INSTALLED)
	exec $(PY) scripts/serve.py --name $(NAME) \
	  --inference-port $(INFERENCE_PORT) --management-port $(MANAGEMENT_PORT) --metrics-port $(METRICS_PORT) \
	  $(if $(MODEL),--model $(MODEL)) $(if $(WEIGHTS),--weights $(WEIGHTS)) $(if $(LABELS),--labels $(LABELS))

# model_store/$(NAME)-v$(VERSION).mar for MODEL (default: the embedded model).
mar: $(INSTALLED)
	$(PY) scripts/build_mar.py --model $(or $(MODEL),shapes) --name $(NAME) --version $(VERSION) \
	  $(if $(WEIGHTS),--weights $(WEIGHTS)) $(if $(LABELS),--labels $(LABELS))

test: $(INSTALLED)
	$(PY) -m pytest

# Retrains the embedded model from scratch (about 20 minutes on 2 cores); CI never does.
train-embedded: $(INSTALLED)
	$(PY) scripts/train_embedded.py --out model_store/embedded/shapes_detector.pt

clean:
	rm -rf model_store/*.mar logs .pytest_cache
