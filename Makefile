# clipsync: `make run` (the main job on the embedded defaults) and `make test` (the suite).
# Both create .venv, install the pinned dependencies (torch first, CPU build) and fetch the MediaPipe
# face model files into .clipsync/cache; they are idempotent and skip what is already done.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CLIENT ?= acme

VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
REGISTRY ?= ghcr.io/clipsync

.PHONY: setup models demo-data run test lint compile images clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock requirements-federated.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: an open range would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -r requirements.lock
	# flwr without its dependencies: its caps conflict with kserve's and mlflow's (see the file's header).
	$(BIN)/pip install --quiet --no-deps -r requirements-federated.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

# fetch-models verifies the cached files and the landmarker bundle's version and only fetches or rebuilds
# what is missing or stale (about a second when all is there), so it runs every time: a cache written by an
# older clipsync (bundle version 1) is rebuilt instead of being trusted because the file exists.
models: $(STAMP)
	$(BIN)/clipsync fetch-models

demo-data: $(STAMP)
	$(BIN)/clipsync demo-data --client $(CLIENT)

run: $(STAMP) models demo-data
	$(BIN)/clipsync run --client $(CLIENT) --config configs/demo.yaml

test: $(STAMP) models
	$(BIN)/ruff check components pipelines serving tests benchmarks
	# Two workers, one test file each at a time (module fixtures stay shared), longest files first (tests/conftest.py).
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile --no-loadscope-reorder --durations=15

lint: $(STAMP)
	$(BIN)/ruff check components pipelines serving tests benchmarks
	$(BIN)/ruff format --check components pipelines serving tests benchmarks

compile: $(STAMP)
	$(BIN)/clipsync compile --client $(CLIENT) -o monthly_retrain.yaml

# One image per dependency profile (components/common/images.py names them); needs a Docker engine or another OCI
# builder with the same CLI (podman, nerdctl), and access to PyPI and Debian at build time.
images:
	for profile in media train serve; do \
		docker build -f images/$$profile/Dockerfile -t $(REGISTRY)/clipsync-$$profile:$(VERSION) . || exit 1; \
	done

clean:
	rm -rf .clipsync/pipeline_root monthly_retrain.yaml
