# Two entry points that work on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.cbir-installed

.PHONY: setup demo test lint smoke-wheel serve bench-extract bench-index eval-wang clean

setup: $(STAMP)

# torch==2.13.0 first: pip takes the CPU build that lies on this machine's disk,
# instead of resolving a multi-GB CUDA build for the train/dev extras.
$(STAMP): pyproject.toml
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium) \
	  || echo "no chromium: the browser tests will skip"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(BIN)/cbir demo --dir .demo

serve: setup
	$(BIN)/cbir serve

lint: setup
	$(BIN)/ruff check src tests bench tools

test: setup lint smoke-wheel
	$(BIN)/pytest -q

# build the sdist and wheel, install the wheel alone into a clean venv (default dependencies,
# no torch), then index, search and serve with it (~30 s with pip's cache warm)
smoke-wheel: setup
	PYTHON=$(BIN)/python bash tests/smoke/smoke_wheel.sh

bench-extract: setup
	$(BIN)/python bench/bench_extract.py

bench-index: setup
	$(BIN)/python bench/bench_index.py

# Wang/Corel-1K from ../shared/datasets (see README: "Evaluation")
eval-wang: setup
	mkdir -p .data && tar xf ../shared/datasets/wang1k.tar -C .data
	$(BIN)/cbir eval folder .data/dataset

clean:
	rm -rf .demo .data build dist
