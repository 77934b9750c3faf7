# Two self-sufficient targets: `make run` (install + run the default suite), `make test`.
# TORCH pins the wheel for the project's own venv; GPU users: make TORCH=torch (CUDA build).
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PY      = $(VENV)/bin/python
# the test files spread over this many processes (pytest-xdist; one file stays on one worker)
WORKERS ?= 2

.PHONY: run test install clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH)"
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev]"
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/resbench run

test: install
	$(PY) -m pytest -q -n $(WORKERS) --dist loadfile

clean:
	rm -rf $(VENV) .asv results/asv-html .pytest_cache .benchmarks
