# llmconsole — two commands on a fresh machine: `make run` (installs what is
# missing, then opens the screen) and `make test` (installs what is missing,
# then runs the suite). `make setup` installs alone.
#
# TORCH_SPEC selects the torch build (the CPU wheel by default); on a CUDA
# cluster: make setup TORCH_SPEC='torch==2.13.0' TORCH_INDEX=<your CUDA index>
# HOROVOD_GPU_OPERATIONS=NCCL.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
HOROVOD_VERSION ?= 0.28.1
HOROVOD_GPU_OPERATIONS ?=
PYTEST_ARGS ?=
# Written when setup has finished; setup runs again when it is missing or
# older than what decides what is installed.
INSTALLED := $(VENV)/.llmconsole-installed

.PHONY: setup venv torch horovod project run test lint bench chaos clean

setup: venv torch horovod project
	$(BIN)/horovodrun --check-build
	touch $(INSTALLED)

$(INSTALLED): pyproject.toml Makefile
	$(MAKE) setup

# The screen on the embedded default cluster (this machine alone); it starts
# the engine if none runs, and quitting leaves jobs running.
run: $(INSTALLED)
	$(BIN)/llmconsole

venv:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel

torch: venv
	$(BIN)/python -m pip install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) '$(TORCH_SPEC)'
	$(BIN)/python -m pip install --quiet numpy cloudpickle psutil pyyaml packaging cffi 'cmake>=3.13,<4'

# horovod builds from source (about 3 minutes on 2 cores); skipped when the
# installed one already imports with PyTorch support.
horovod: torch
	@if $(BIN)/python -c "import horovod, horovod.torch; assert horovod.__version__ == '$(HOROVOD_VERSION)'" 2>/dev/null; then \
	  echo "horovod $(HOROVOD_VERSION) already built"; \
	else \
	  PATH="$(CURDIR)/$(BIN):$$PATH" CXX="$(CURDIR)/tools/cxx17" \
	  HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
	  HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 CMAKE_POLICY_VERSION_MINIMUM=3.5 \
	  $(if $(HOROVOD_GPU_OPERATIONS),HOROVOD_GPU_OPERATIONS=$(HOROVOD_GPU_OPERATIONS)) \
	  MAKEFLAGS="-j$$(nproc)" \
	  $(BIN)/python -m pip install --no-build-isolation --no-cache-dir 'horovod==$(HOROVOD_VERSION)'; \
	fi

project: venv
	$(BIN)/python -m pip install --quiet -e '.[dev]'

test: $(INSTALLED)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(INSTALLED)
	$(BIN)/ruff check console engine tests bench chaos
	$(BIN)/mypy

bench: $(INSTALLED)
	$(BIN)/python -m bench

# The fault campaign on loopback, one table of figures against targets
# (docs/DESIGN.md, "Faults"); exit 1 when a target is missed.
chaos: $(INSTALLED)
	$(BIN)/python -m chaos

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
