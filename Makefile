# Every target works from a fresh clone on a machine with no GPU.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: install test lint demo ui clean

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

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
