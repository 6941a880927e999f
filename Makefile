# The two commands: `make demo` and `make test`. Each sets up .venv from the pinned
# requirements (idempotent: a stamp file makes a no-change run take seconds).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.stamp
DEMO_DIR ?= demo_out

.PHONY: demo test lint typecheck pytest venv clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

# `make demo SERVE=1` ends with the service running on the demo's data (Ctrl-C stops it).
demo: $(STAMP)
	$(BIN)/medai demo $(DEMO_DIR) $(if $(SERVE),--serve)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts

typecheck: $(STAMP)
	$(BIN)/mypy

# The suite runs on SQLite; where MEDAI_TEST_PG names a PostgreSQL server (.ci/run starts
# one on loopback) the service tests run a second time against it.
pytest: $(STAMP)
	env -u MEDAI_TEST_PG $(BIN)/pytest -n 2 --dist loadfile
	@if [ -n "$${MEDAI_TEST_PG:-}" ]; then \
	  echo "service tests again on PostgreSQL"; \
	  $(BIN)/pytest -n 2 --dist loadfile tests/test_service_*.py; fi

test: lint typecheck pytest

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .mypy_cache .ruff_cache
