# Every target works from a fresh clone on a machine with no GPU.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: install test lint demo tune-demo reproduce report run ui bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,ray,export]'
	touch $(STAMP)

test: install
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .

JOBS    ?= 2
REPORT  ?= reports_out

# The offline demo grid on scikit-learn's digits (88 runs), then its report.
demo: install
	$(BIN)/lorita-bench sweep benchmarks/configs/demo.yaml --jobs $(JOBS)
	$(BIN)/lorita-bench report --experiment demo --out $(REPORT)/demo
	@echo ""
	@echo "report:         $(REPORT)/demo/report.html (and report.md, figures/, tables/)"
	@echo "tracking store: $${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlflow.db}"
	@echo "browse runs:    make ui   (MLflow UI on http://127.0.0.1:5000)"

# A tuned comparison on digits: every method tuned alike (8 trials, validation split), then reported on 2 seeds.
tune-demo: install
	$(BIN)/lorita-bench sweep benchmarks/configs/tune_digits.yaml --jobs $(JOBS)
	$(BIN)/lorita-bench report --experiment tune-demo --out $(REPORT)/tune-demo
	@echo ""
	@echo "report: $(REPORT)/tune-demo/report.html (selected values, optimisation histories, tuned tables)"

# The paper's grid: PRESET=paper (full budgets; a GPU job) or short (epochs cut 20x); DATA_ROOT=folder
# holding the datasets; BLOCKS=mnist_fcn,... for a subset; EXECUTOR=ray runs the runs as Ray tasks (one
# GPU each where there are GPUs; ADDRESS=head:6379 joins a cluster) instead of JOBS local processes.
PRESET  ?= paper
reproduce: install
	$(BIN)/lorita-bench reproduce --preset $(PRESET) $(if $(DATA_ROOT),--data-root $(DATA_ROOT)) \
		$(if $(BLOCKS),--blocks $(BLOCKS)) \
		$(if $(filter ray,$(EXECUTOR)),--executor ray $(if $(ADDRESS),--address $(ADDRESS)),--jobs $(JOBS))

# Figures and tables again from the tracking store, no retraining (EXPERIMENT=name for one experiment).
report: install
	$(BIN)/lorita-bench report --out $(REPORT) $(if $(EXPERIMENT),--experiment $(EXPERIMENT))

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
