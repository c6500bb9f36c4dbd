# bayesdl: set-up, demo, tests, benchmarks and lint. Every target installs what it needs.
#   make demo                     # quickstart tutorial on real data -> outputs/quickstart/
#   make test                     # the test suite (slow statistical tests: make test-slow)
#   make demo TORCH_SPEC=torch    # another torch build than the default CPU pin
#   make test BAYESDL_NO_APT=1    # do not try to install Fashion-MNIST (see `data` below)

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BAYESDL_DATA ?= $(abspath ../shared/data)
export BAYESDL_DATA

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell printf '%s' '$(TORCH_SPEC)' | cksum | cut -d' ' -f1)

.PHONY: install data demo test test-slow tutorials bench lint clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[test,dev]"
	@rm -f $(VENV)/.installed-*
	@touch $@

install: $(STAMP)

# Fashion-MNIST (tutorials 03-04, their tests) is the Debian package dataset-fashion-mnist:
# installed here, quietly, when running as root with apt-get. Never an error: without it the
# tests that need it skip with the reason and the tutorials' smoke runs use a synthetic
# stand-in. BAYESDL_NO_APT=1 skips the attempt (e.g. to check a machine without the package), so
# does BAYESDL_FASHION_MNIST (the images are then in that folder).
data:
	@if [ -z "$(BAYESDL_NO_APT)$(BAYESDL_FASHION_MNIST)" ] \
	    && [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$$(id -u)" = 0 ] \
	    && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing dataset-fashion-mnist (Debian package) ..."; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
	  || { apt-get update -q >/dev/null 2>&1 \
	       && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } \
	  || echo "note: could not install dataset-fashion-mnist; the tests that need it will skip"; \
	fi

demo: install
	$(BIN)/python tutorials/01_quickstart.py

test: install data
	$(BIN)/python -m pytest

test-slow: install data
	$(BIN)/python -m pytest -m slow

tutorials: install data
	@for t in tutorials/[0-9]*.py; do echo "== $$t"; $(BIN)/python $$t || exit 1; done

bench: install data
	@for b in benchmarks/[a-z]*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

lint: install
	$(BIN)/python -m ruff check .

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache
