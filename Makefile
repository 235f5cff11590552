# The two commands of the README: `make demo` (main job on the synthetic town) and `make test`.
# Both create .venv and install the package on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN ?= runs/demo
SIM_ARGS ?= --scenes 8 --samples-per-scene 8 --seed 0

.PHONY: install test demo bench clean

$(BIN)/rdistill: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	touch $@

install: $(BIN)/rdistill

test: install
	$(BIN)/python -m pytest -q tests

$(RUN)/town/splits.json: | install
	rm -rf $(RUN)/town
	$(BIN)/rdistill make-sim $(RUN)/town $(SIM_ARGS)

demo: $(RUN)/town/splits.json
	$(BIN)/rdistill inspect $(RUN)/town --out $(RUN)/inspect.json --quiet
	$(BIN)/rdistill precompute $(RUN)/town --teacher sim-clip --out $(RUN)/features --quiet

bench: install
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(RUN)
