# Everyday verbs. Each one creates .venv and installs the project on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PACKAGE ?= packages/default
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install test test-slow lint proto serve bench bench-tools peers bench-peers train-default train-frontier clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch/torchvision first, pinned: this build installs from the machine's local disk.
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

# The gRPC API's Python code, generated from its .proto and committed (docs/service.md, "gRPC"):
# run after editing service/grpc/grpc_service.proto; tests/service/test_grpc_proto.py checks it.
proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. \
	  service/grpc/grpc_service.proto

serve: $(STAMP)
	@test -e "$(PACKAGE)" || { \
	  echo "error: model package '$(PACKAGE)' is missing." >&2; \
	  echo "  Train and export the default one with 'make train-default' (writes packages/default)," >&2; \
	  echo "  or serve another package: make serve PACKAGE=path/to/package" >&2; exit 1; }
	ANYTIME_MODELS='["$(PACKAGE)"]' $(PY) -m service --host $(HOST) --port $(PORT)

# Serving figures of packages/default -> BENCHMARKS.md.
# Smoke run in minutes: make bench ARGS=--quick   (options: .venv/bin/python -m benchmarks --help)
bench: $(STAMP)
	$(PY) -m benchmarks $(ARGS)

# Side-by-side serving figures: this service vs Triton (PyTriton) and LitServe, loaded by wrk.
# Debian's wrk and python3-venv; each peer gets a venv under .peers/ made with Debian's own
# python3 (PyTriton's Python-backend stub does not start under other builds of Python 3.11).
PEERS := .peers
SYSTEM_PYTHON ?= /usr/bin/python3
bench-tools:
	@command -v wrk >/dev/null && $(SYSTEM_PYTHON) -c 'import ensurepip' 2>/dev/null || \
	  { apt-get update && apt-get install -y wrk python3-venv; }

$(PEERS)/%/.installed: benchmarks/peers/requirements-%.txt | bench-tools
	@test -x $(PEERS)/$*/bin/python || $(SYSTEM_PYTHON) -m venv $(PEERS)/$*
	$(PEERS)/$*/bin/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PEERS)/$*/bin/python -m pip install --quiet -r $<
	@touch $@

peers: $(PEERS)/triton/.installed $(PEERS)/litserve/.installed

# ANYTIME_PRECISION=int8 make bench-peers: the service and the peers on the package's int8 graphs.
bench-peers: $(STAMP) peers
	$(PY) -m benchmarks --only peers $(ARGS)

# The shipped model, in seven resumable runs (docs/training.md, "The shipped default model"):
# the four-phase model (50 epochs; warm restarts of 15 and 40; 60 epochs of SWA), then born-again
# networks it teaches: an 80-epoch one; a second, taught by the four-phase model and the first
# together, with 30 epochs of SWA; and 30 epochs of SWA from the first, taught by the four-phase
# model and the second together: the shipped weights. Then calibrate and export the package.
# The teachers are the run's own checkpoints, never packages/default (which export rewrites).
RUN_DIR ?= runs/default
train-default: $(STAMP)
	$(PY) -m training train --config configs/msdnet_cifar10_default.yaml --run-dir $(RUN_DIR) --resume $(ARGS)
	$(PY) -m training train --config configs/msdnet_cifar10_default_restart.yaml \
	  --run-dir $(RUN_DIR)/restart --init-from $(RUN_DIR)/last.pt --resume $(ARGS)
	$(PY) -m training train --config configs/msdnet_cifar10_default_restart2.yaml \
	  --run-dir $(RUN_DIR)/restart2 --init-from $(RUN_DIR)/restart/last.pt --resume $(ARGS)
	$(PY) -m training train --config configs/msdnet_cifar10_default_swa.yaml \
	  --run-dir $(RUN_DIR)/swa --init-from $(RUN_DIR)/restart2/last.pt --resume $(ARGS)
	$(PY) -m training train --config configs/msdnet_cifar10_default_ban.yaml \
	  --run-dir $(RUN_DIR)/ban --kd-teacher $(RUN_DIR)/swa/last.pt --resume $(ARGS)
	$(PY) -m training train --config configs/msdnet_cifar10_default_ban.yaml --set seed=18 \
	  --run-dir $(RUN_DIR)/ens --kd-teacher $(RUN_DIR)/swa/last.pt $(RUN_DIR)/ban/last.pt --resume $(ARGS)
	$(PY) -m training train --config configs/msdnet_cifar10_default_swa.yaml --epochs 30 --set seed=19 \
	  --run-dir $(RUN_DIR)/ens/swa --init-from $(RUN_DIR)/ens/last.pt \
	  --kd-teacher $(RUN_DIR)/swa/last.pt $(RUN_DIR)/ban/last.pt --resume $(ARGS)
	$(PY) -m training train --config configs/msdnet_cifar10_default_swa.yaml --epochs 30 --set seed=12 \
	  --run-dir $(RUN_DIR)/ban/swa_ens --init-from $(RUN_DIR)/ban/last.pt \
	  --kd-teacher $(RUN_DIR)/swa/last.pt $(RUN_DIR)/ens/swa/last.pt --resume $(ARGS)
	$(PY) -m training calibrate --run-dir $(RUN_DIR)/ban/swa_ens
	$(PY) -m training export --run-dir $(RUN_DIR)/ban/swa_ens --out $(PACKAGE) --name msdnet-cifar10-imta

# The frontier recipe (docs/frontier.md): the WideNet teacher (airbench95's recipe on the
# project's split), then the six-exit WideNet student it teaches with the ablation's kept
# ingredients, calibrated to the front table and exported to its own package. Every step resumes.
# It never writes packages/default: serve it with make serve PACKAGE=$(FRONTIER_PACKAGE).
FRONTIER_DIR ?= runs/frontier
FRONTIER_PACKAGE ?= packages/frontier
train-frontier: $(STAMP)
	$(PY) -m training train --config configs/frontier/teacher.yaml --run-dir $(FRONTIER_DIR)/teacher --resume $(ARGS)
	$(PY) -m training train --config configs/frontier/student.yaml --run-dir $(FRONTIER_DIR)/student \
	  --kd-teacher $(FRONTIER_DIR)/teacher/last.pt --resume $(ARGS)
	$(PY) -m training calibrate --run-dir $(FRONTIER_DIR)/student
	$(PY) -m training export --run-dir $(FRONTIER_DIR)/student --out $(FRONTIER_PACKAGE) --name widenet-cifar10-frontier

clean:
	rm -rf $(VENV) $(PEERS) .pytest_cache .mypy_cache .ruff_cache

# Containers (docs/deployment.md, "Building the images here"). docker/local.sh starts dockerd when
# no engine answers (as root), builds a local Debian bookworm base when the official base image
# cannot be pulled (installing debootstrap as root, else printing the command to run), and trusts
# the host's CA bundle in the build (CA_BUNDLE=... to change it).
# Not in CI: builds take minutes and the network; run docker-smoke when docker/ or the start
# command changes.   make docker-build DOCKER_IMAGES="cpu gpu"
.PHONY: docker-base docker-build docker-smoke docker-stack
DOCKER_IMAGES ?= cpu
docker-base:
	docker/local.sh base

docker-build:
	docker/local.sh build $(DOCKER_IMAGES)

docker-smoke: $(STAMP)
	docker/local.sh smoke

docker-stack: $(STAMP)
	docker/local.sh stack
