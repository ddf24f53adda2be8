# The two set-up commands of the README: `make serve` and `make test`. Each creates .venv when it is
# missing and (re)installs the package whenever pyproject.toml changed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test lint format bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/mlxd serve $(ARGS)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest $(PYTEST_ARGS)

# The benchmark suite with mlx-lm's own server as a peer; QUICK=1 for the reduced run,
# ARGS for more flags (e.g. ARGS="--peer http://127.0.0.1:8080 --prefix-tokens 19000").
bench: $(STAMP)
	$(BIN)/python -m benchmarks --mlx-lm-server $(if $(QUICK),--quick) $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) tests/.models
