# The two commands of the README: `make demo` (main job on the synthetic town) and `make test`.
# The demo is the comparison's seed-0 relational student (benchmarks/compare_losses.py): the same town (8 scenes x 6
# samples, seed 0), configs/distill_cpu.yaml as it is (32 epochs) and U / T / G on 1,000 features per class.
# Both create .venv and install the package on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN ?= runs/demo
SIM_ARGS ?= --scenes 8 --samples-per-scene 6 --seed 0

.PHONY: install test demo bench clean gpu-check fuzz

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
	$(BIN)/rdistill inspect $(RUN)/town --out $(RUN) --quiet
	$(BIN)/rdistill precompute $(RUN)/town --teacher sim-clip --out $(RUN)/features --quiet
	$(BIN)/rdistill distill $(RUN)/town --features $(RUN)/features --loss relational \
		--config configs/distill_cpu.yaml --out $(RUN)/relational $(if $(wildcard $(RUN)/relational/checkpoint.pt),--resume) --quiet
	$(BIN)/rdistill evaluate $(RUN)/relational/checkpoint.pt --zero-shot --quiet
	$(BIN)/rdistill analyze $(RUN)/relational/checkpoint.pt --metrics uniformity,tolerance,gap --per-class 1000 --quiet
	@echo "demo done (synthetic town, simulated teacher): tables and plots are in $(RUN)/"
	@echo "  $(RUN)/features/summary.json          teacher U, T, 2D zero-shot accuracy"
	@echo "  $(RUN)/relational/distill.json         loss per epoch ($(RUN)/relational/log.jsonl per step)"
	@echo "  $(RUN)/relational/zero_shot.json       zero-shot per-class IoU and mIoU"
	@echo "  $(RUN)/relational/analysis/analysis.json and analysis.png   U, T, modality gap, PCA plot"

# Bounded fuzzing of every file reader: more than 10,000 damaged files, zero tracebacks and zero hangs
# (tests/test_fuzz.py; the cases of each reader are reported; make test runs 1 % of them)
fuzz: install
	RDISTILL_FUZZ=1 $(BIN)/python -m pytest -q tests/test_fuzz.py --hypothesis-show-statistics

bench: install
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

# CUDA tests + CUDA benchmarks in one short run (under 8 minutes on one H100/H200); without a GPU it prints one
# line and exits 0, so CI can call it
gpu-check:
	bash benchmarks/gpu_check.sh

clean:
	rm -rf $(RUN)
