# Every target works from a fresh clone on a machine with no GPU.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: install test lint demo run ui bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

test: install
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .

demo: install
	@echo "make demo is delivered by the sweeps/report issue; until then see README 'Quick start'." && exit 1

# make run ARGS="--model fcn --dataset digits --method lorita --factors 3 --target-flops-drop 0.5"
run: install
	$(BIN)/lorita-bench run $(ARGS)

# The MLflow UI for ./mlflow.db (or MLFLOW_TRACKING_URI), on 127.0.0.1 only.
ui: install
	$(BIN)/lorita-bench ui $(if $(PORT),--port $(PORT))

# Performance benchmarks (training step, data path, planning, inference); tables land in benchmarks/perf/results.
bench: install
	$(BIN)/python -m benchmarks.perf.all --out benchmarks/perf/results

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
