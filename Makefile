# Developer and CI entry points. `make test` is what CI runs (via .ci/run).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install test check lint imports fmt type pytest schema schema-check demo bench-smoke clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	# xds-protos bundles an old copy of the opentelemetry.proto modules; whichever package pip installs last
	# owns those files, and the OTLP exporter needs opentelemetry-proto's own (docs/observability.md)
	$(BIN)/python -m pip install --quiet --force-reinstall --no-deps \
	  "opentelemetry-proto==$$($(BIN)/python -c 'from importlib.metadata import version; print(version("opentelemetry-proto"))')"
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check epp tests
	$(BIN)/ruff format --check epp tests

# the layer contracts ([tool.importlinter] in pyproject.toml; docs/architecture.md)
imports: $(STAMP)
	$(BIN)/lint-imports --no-logo

fmt: $(STAMP)
	$(BIN)/ruff format epp tests
	$(BIN)/ruff check --fix epp tests

type: $(STAMP)
	$(BIN)/mypy

schema: $(STAMP)
	$(BIN)/epp schema > schemas/endpointpickerconfig.schema.json

schema-check: $(STAMP)
	$(BIN)/epp schema | cmp -s - schemas/endpointpickerconfig.schema.json || \
	  (echo "schemas/endpointpickerconfig.schema.json is stale: run 'make schema'" && exit 1)
	$(BIN)/epp validate profiles/*.yaml

check: lint imports type schema-check

pytest: $(STAMP)
	$(BIN)/pytest -q

test: check pytest

demo: $(STAMP)
	$(BIN)/epp demo

bench-smoke: $(STAMP)
	$(BIN)/epp bench install
	$(BIN)/epp bench quality --smoke
	$(BIN)/epp bench overhead --smoke

clean:
	rm -rf $(VENV) .cache .mypy_cache .ruff_cache .pytest_cache
