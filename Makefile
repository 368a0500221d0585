# axon: the two commands a newcomer runs are `make demo` and `make test`.
# Every target builds the virtualenv first, so each works on a fresh clone.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv demo test lint architecture typecheck unit bench stress system-deps clean

# Bytecode as a (non-editable) pip install would leave it: every axon command starts
# ~0.1 s faster (this environment may set PYTHONDONTWRITEBYTECODE). Stale files are only
# ignored, never wrong.
venv: $(STAMP)
	@$(BIN)/python -m compileall -q src

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[all]'
	touch $(STAMP)

# System packages the tests and demo use (sshd, etcd, rsync, ...). Installs with apt-get
# when run as root; otherwise prints what is missing and the tests that need it skip.
system-deps:
	@bash scripts/system-deps.sh

demo: venv system-deps
	@bash scripts/demo.sh

lint: venv
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports

# The layers and independence contracts in pyproject.toml ([tool.importlinter]).
architecture: venv
	$(BIN)/lint-imports

typecheck: venv
	$(BIN)/mypy

unit: venv system-deps
	$(BIN)/pytest -q

test: venv system-deps
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/pytest -q

bench: venv system-deps
	@bash scripts/bench-user.sh
	$(BIN)/python -m benchmarks

stress: venv system-deps
	AXON_STRESS=full $(BIN)/pytest -q tests/stress

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build src/*.egg-info
