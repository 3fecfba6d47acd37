# Two commands: `make demo` runs the main job, `make test` runs the tests.
# Each creates .venv from scratch when it is missing and installs the project with the extras it needs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test fuzz bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing memstate with its jax and dev extras into $(VENV) (log: $(VENV)/install.log)"
	@$(PY) -m pip install --upgrade pip > $(VENV)/install.log 2>&1 || (cat $(VENV)/install.log; exit 1)
	@$(PY) -m pip install -e '.[dev,jax]' >> $(VENV)/install.log 2>&1 || (cat $(VENV)/install.log; exit 1)
	touch $(STAMP)

demo: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" bash scripts/demo.sh

test: $(STAMP)
	$(PY) -m pytest -q

fuzz: $(STAMP)
	$(PY) -m pytest -q -m fuzz tests/robust

bench: $(STAMP)
	$(PY) benchmarks/bench_impls.py

clean:
	rm -rf $(VENV) out .pytest_cache .hypothesis
