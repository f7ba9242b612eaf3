# The two README commands: `make demo` (`raydprm run`, the main job, on its embedded default) and
# `make test` (the whole CPU test suite). Both bootstrap .venv first (no-op when current).
SHELL := /bin/bash
PY := .venv/bin/python
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_USAGE_STATS_ENABLED := 0
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test lint bench clean

setup:
	@scripts/bootstrap.sh

demo: setup
	$(PY) -m raydprm.cli run $(ARGS)

test: setup
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

lint: setup
	.venv/bin/ruff check raydprm tests bench jobs

clean:
	rm -rf .venv .cache runs
