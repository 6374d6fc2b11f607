# Two entry points on a fresh machine: `make demo` (the main job) and `make test` (the test suite).
# Both create .venv and install the project into it first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint registry clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $@

install: $(BIN)/.installed

demo: install
	scripts/demo.sh

lint: install
	$(BIN)/ruff check .

test: lint
	$(BIN)/pytest

registry: install
	scripts/build_registry.sh registry.db

clean:
	rm -rf $(VENV) out .pytest_cache .hypothesis
