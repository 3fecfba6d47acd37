# Two commands: `make demo` runs the main job, `make test` type-checks and runs the tests
# (`make mutation`: docs/testing.md; `make fuzz`: the long reader fuzzing; `make docs`: quoted outputs).
# Each creates .venv from scratch when it is missing and installs the project with the extras it needs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test fuzz bench mutation typecheck docs clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing memstate with its jax and dev extras into $(VENV) (log: $(VENV)/install.log)"
	@$(PY) -m pip install --upgrade pip > $(VENV)/install.log 2>&1 || (cat $(VENV)/install.log; exit 1)
	@$(PY) -m pip install -e '.[dev,jax]' >> $(VENV)/install.log 2>&1 || (cat $(VENV)/install.log; exit 1)
	touch $(STAMP)

demo: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" bash scripts/demo.sh

test: $(STAMP)
	$(PY) scripts/typecheck.py
	$(PY) -m pytest -q

# mypy at default settings on the package as it installs (impls and scenarios inside memstate)
typecheck: $(STAMP)
	$(PY) scripts/typecheck.py

# rewrite the command outputs quoted in README.md and docs/ (a test checks the fast ones)
docs: $(STAMP)
	$(PY) scripts/doc_outputs.py

fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=explore $(PY) -m pytest -q -m fuzz tests/robust

# Mutation testing of the decision code, each module against its own tests (docs/testing.md); minutes, not
# part of `make test`.
$(VENV)/.mutation-installed: $(STAMP)
	@$(PY) -m pip install -e '.[dev,jax,mutation]' >> $(VENV)/install.log 2>&1 || (cat $(VENV)/install.log; exit 1)
	touch $@

mutation: $(VENV)/.mutation-installed
	$(PY) scripts/mutation.py $(MODULES)

bench: $(STAMP)
	$(PY) benchmarks/bench_impls.py

clean:
	rm -rf $(VENV) out .pytest_cache .hypothesis .mutation
