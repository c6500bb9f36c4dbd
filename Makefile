# bayesdl: set-up, demo, tests, benchmarks and lint. Every target installs what it needs.
#   make demo                     # quickstart tutorial on real data -> outputs/quickstart/
#   make test                     # the test suite (slow statistical tests: make test-slow)
#   make demo TORCH_SPEC=torch    # another torch build than the default CPU pin

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BAYESDL_DATA ?= $(abspath ../shared/data)
export BAYESDL_DATA

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell printf '%s' '$(TORCH_SPEC)' | cksum | cut -d' ' -f1)

.PHONY: install demo test test-slow tutorials bench lint clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[test,dev]"
	@rm -f $(VENV)/.installed-*
	@touch $@

install: $(STAMP)

demo: install
	$(BIN)/python tutorials/01_quickstart.py

test: install
	$(BIN)/python -m pytest

test-slow: install
	$(BIN)/python -m pytest -m slow

tutorials: install
	@for t in tutorials/[0-9]*.py; do echo "== $$t"; $(BIN)/python $$t || exit 1; done

bench: install
	@for b in benchmarks/[a-z]*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

lint: install
	$(BIN)/python -m ruff check .

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache
