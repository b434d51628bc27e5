# The two commands of the README. Each makes .venv and installs the project (with its extras)
# when it is missing or older than pyproject.toml, so a fresh machine needs nothing else.
PYTHON ?= python3
VENV ?= .venv
# Set by `make test-newest`: lifts this machine's pip cap (a constraints file capping torch) for that venv only.
PIP_ENV ?=
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?= -m "not slow"

.PHONY: demo test test-newest bench gpu-check compile-matrix clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_ENV) $(PY) -m pip install --quiet --upgrade pip
	$(PIP_ENV) $(PY) -m pip install --quiet -e ".[dev,demo]"
	$(PY) -c "import torch, triton, timm; print('installed: torch', torch.__version__, '| triton', triton.__version__, '| timm', timm.__version__)"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) tools/demo.py

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The same suite on the newest torch/triton pip resolves without the cap, in its own venv (CI runs both).
test-newest:
	$(MAKE) --no-print-directory test VENV=.venv-newest PIP_ENV=PIP_CONSTRAINT=/dev/null

bench: $(STAMP)
	$(PY) tools/bench_kernels.py --device cuda

# The GPU check runs on the machine's own python and packages (torch, triton, timm): no venv, no
# pip. It skips with one line (exit 0) where there is no CUDA device.
gpu-check:
	PYTHONPATH=. python3 tools/gpu_check.py

# Every registered model's Triton launches compiled for sm_80/86/89/90 (+ sm_100/sm_120 where
# Triton's ptxas takes them) in bf16, fp16, fp32 "highest" and "high"; no GPU needed. Writes
# benchmarks/results/compile_matrix.md/.json; compiles are cached (VITZOO_COMPILE_CACHE).
compile-matrix: $(STAMP)
	$(PY) tools/compile_matrix.py

clean:
	rm -rf $(VENV) .venv-newest .pytest_cache build *.egg-info
