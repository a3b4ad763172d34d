# objdetect: `make serve` and `make test` are the two commands; the rest are their parts.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Two installs in one venv: SERVING has what serving and building archives and images need;
# DEV adds the dev extra (pytest, locust, atheris, moto, ...) for the tests and the tools.
SERVING := $(VENV)/.installed
DEV := $(VENV)/.installed-dev
SERVING_EXTRAS := openvino,java,client
CHECKOV_VENV := .venv-checkov
CHECKOV := $(CHECKOV_VENV)/bin/checkov

MODEL ?=
WEIGHTS ?=
LABELS ?=
NAME ?= detector
VERSION ?= 1.0
INFERENCE_PORT ?= 8080
MANAGEMENT_PORT ?= 8081
METRICS_PORT ?= 8082
GRPC_INFERENCE_PORT ?= 7070
GRPC_MANAGEMENT_PORT ?= 7071
WORKERS_PORT ?= 9000

.PHONY: setup serve mar batch test test-unit train-embedded clean image image-test cold-start loadtest soak bench gpu-check fuzz validate-terraform

# Everything `make test` needs (what CI runs first): the serving venv, the dev extra, checkov.
setup: $(DEV) $(CHECKOV)

FRONTEND_SOURCES := handlers/objdetect_serving/frontend.py handlers/objdetect_serving/HttpRequestHandler.java

# The venv in the checkout with the pinned dependencies for serving; redone when pyproject.toml changes.
# TorchServe's frontend then runs on Debian's libnetty-java instead of the Netty of 2020 it bundles,
# with objdetect's request checks and readiness /ping compiled in (docs/security.md).
$(SERVING): pyproject.toml $(FRONTEND_SOURCES)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --no-cache-dir -e '.[$(SERVING_EXTRAS)]'
	$(PY) -m objdetect_serving.frontend install
	touch $@

# The dev extra on top, resolved together with the serving extras; redone after the serving install.
# The frontend is installed again after it: a pip install that replaced TorchServe would bring back
# the jar with the old Netty (the step is idempotent).
$(DEV): $(SERVING) pyproject.toml $(FRONTEND_SOURCES)
	$(PY) -m pip install --no-cache-dir -e '.[dev,$(SERVING_EXTRAS)]'
	$(PY) -m objdetect_serving.frontend install
	touch $@

# checkov (Terraform checks) in a venv of its own: it ships its own copy of the hcl2 module.
$(CHECKOV):
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --no-cache-dir checkov==3.3.30

# Builds the archive into model_store/, serves it on 127.0.0.1 until Ctrl-C (or SIGTERM).
serve: $(SERVING)
	exec $(PY) scripts/serve.py --name $(NAME) \
	  --inference-port $(INFERENCE_PORT) --management-port $(MANAGEMENT_PORT) --metrics-port $(METRICS_PORT) \
	  --grpc-inference-port $(GRPC_INFERENCE_PORT) --grpc-management-port $(GRPC_MANAGEMENT_PORT) \
	  --workers-port $(WORKERS_PORT) \
	  $(if $(MODEL),--model $(MODEL)) $(if $(WEIGHTS),--weights $(WEIGHTS)) $(if $(LABELS),--labels $(LABELS))

# model_store/$(NAME)-v$(VERSION).mar for MODEL (default: the embedded model).
mar: $(SERVING)
	$(PY) scripts/build_mar.py --model $(or $(MODEL),shapes) --name $(NAME) --version $(VERSION) \
	  $(if $(WEIGHTS),--weights $(WEIGHTS)) $(if $(LABELS),--labels $(LABELS))

# A batch job over INPUT (a folder, an s3://bucket/prefix or a .txt manifest) into OUTPUT, with
# PROCESSES local children standing in for an AWS Batch array's, each running one shard with the
# archive `make mar` builds (docs/batch.md). s3:// takes boto3's usual credentials.
INPUT ?=
OUTPUT ?=
PROCESSES ?= 2
batch: mar
	$(PY) scripts/batch.py local '$(INPUT)' '$(OUTPUT)' --processes $(PROCESSES) \
	  --archive model_store/$(NAME)-v$(VERSION).mar

test: $(DEV) $(CHECKOV)
	$(PY) -m pytest

# The fast half: every test marked `unit` but not `slow` (no TorchServe, no subprocess), and its time.
test-unit: $(DEV)
	@SECONDS=0; status=0; $(PY) -m pytest -m "unit and not slow" -q || status=$$?; \
	  echo "make test-unit: $$SECONDS s"; exit $$status

# Retrains the embedded model from scratch (about 20 minutes on 2 cores); CI never does.
train-embedded: $(DEV)
	$(PY) scripts/train_embedded.py --out model_store/embedded/shapes_detector.pt

clean:
	rm -rf model_store/*.mar logs .pytest_cache

# The container image objdetect:$(FLAVOR) (cuda or cpu) serving MODEL (default: the embedded model),
# with the checkpoint WEIGHTS and its LABELS baked in when given, and its sizes. See docs/image.md.
FLAVOR ?= cuda
image: $(SERVING)
	$(PY) scripts/image.py --flavor $(FLAVOR) --model $(or $(MODEL),shapes) \
	  $(if $(WEIGHTS),--weights '$(WEIGHTS)') $(if $(LABELS),--labels '$(LABELS)')

# Builds objdetect:cuda, runs it and checks it (health, a prediction, non-root, nothing to build
# with inside, SIGTERM); prints the sizes and the cold start.
image-test: $(DEV) $(CHECKOV)
	$(PY) scripts/image_test.py

# Server start to first answered prediction, per CPU runtime, on loopback (no container); and what
# compiling the archive's OpenVINO parts costs, with and without OpenVINO's model cache. Minutes.
cold-start: $(DEV)
	$(PY) scripts/cold_start.py

# Load test with locust (headless) against HOST, or a local server started for the run; the
# report lands in reports/loadtest-<timestamp>/. `make soak` runs at a fixed rate and watches memory.
HOST ?=
USERS ?= 4
SPAWN_RATE ?= 2
DURATION ?= 60s
RATE ?= 1
loadtest: $(DEV) $(CHECKOV)
	$(PY) scripts/loadtest.py $(if $(HOST),--host $(HOST)) --users $(USERS) --spawn-rate $(SPAWN_RATE) --duration $(DURATION)

soak: $(DEV)
	$(PY) scripts/loadtest.py $(if $(HOST),--host $(HOST)) --users $(USERS) --spawn-rate $(SPAWN_RATE) --duration $(DURATION) --soak --rate $(RATE)

# Coverage-guided fuzzing (atheris) of the whole request path for SECONDS; the corpus is kept in
# reports/fuzz/corpus, a crash's input lands in reports/fuzz/crash-* (make it a regression test).
SECONDS ?= 600
fuzz: $(DEV)
	$(PY) scripts/fuzz.py --seconds $(SECONDS)

# Side by side on this machine: direct (no server), TorchServe's stock object_detector, ours.
# Writes reports/bench.json and docs/benchmarks.md (about 40 minutes with two extra variants; BENCH_ARGS=--quick for a smoke run).
BENCH_ARGS ?=
bench: $(DEV)
	$(PY) scripts/bench.py $(BENCH_ARGS)

# The GPU path checked and timed in-process, one report in OUT (default reports/gpu-check-<time>);
# docs/gpu.md. On the lent GPU machine, which has torch but not our venv: GPU_PYTHON=python3.
GPU_PYTHON ?= $(PY)
OUT ?=
gpu-check: $(if $(filter $(PY),$(GPU_PYTHON)),$(DEV))
	PYTHONPATH=handlers$${PYTHONPATH:+:$$PYTHONPATH} $(GPU_PYTHON) scripts/gpu_check.py $(if $(OUT),--out $(OUT)) $(GPU_CHECK_ARGS)

# terraform validate on a copy of terraform/, offline: against a stand-in hashicorp/aws that serves the
# provider's schema (recovered once from its CDK bindings on PyPI, cached in .venv/terraform-schema/);
# prints what it could not check. Where registry.terraform.io is reachable,
# VALIDATE_TERRAFORM_ARGS=--real-provider runs plain terraform init -backend=false && terraform validate.
VALIDATE_TERRAFORM_ARGS ?=
validate-terraform: $(DEV)
	$(PY) scripts/validate_terraform.py $(VALIDATE_TERRAFORM_ARGS)
