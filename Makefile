# The two commands of the README. Each makes .venv and installs the project (with its extras)
# when it is missing or older than pyproject.toml, so a fresh machine needs nothing else.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?= -m "not slow"

.PHONY: demo test bench gpu-check clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,demo]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) tools/demo.py

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) tools/bench_kernels.py --device cuda

# The GPU check runs on the machine's own python and packages (torch, triton, timm): no venv, no
# pip. It skips with one line (exit 0) where there is no CUDA device.
gpu-check:
	PYTHONPATH=. python3 tools/gpu_check.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
