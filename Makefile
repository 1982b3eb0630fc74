# Two commands: `make setup` (fresh venv, pinned stack) and `make test` (the whole suite, slow tests included;
# the headless-browser tests run apart, in `make test-browser`).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions
export DS_ACCELERATOR ?= cpu
export WANDB_MODE ?= disabled

.PHONY: setup test test-fast test-browser test-transformers5 quickstart bench

setup:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -r requirements.txt
	$(BIN)/pip install -e .
	# Build DeepSpeed's CPU communication op once, now, rather than in two racing ranks of a first launch.
	$(BIN)/python -c "from deepspeed.ops.op_builder.cpu.comm import ShareMemCommBuilder; ShareMemCommBuilder().load(verbose=False)"

test:
	$(BIN)/python -m pytest -m "not browser"

test-fast:
	$(BIN)/python -m pytest

# t3d-view's HTML page checked in a real headless browser (tests/test_view_browser.py, marker `browser`), Debian's
# chromium: installed through apt when it is missing and this runs as root, else one line says what to install.
test-browser:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium; \
	  else \
	    echo "make test-browser: /usr/bin/chromium is missing: install Debian's chromium (sudo apt-get install --no-install-recommends chromium) and rerun"; exit 1; \
	  fi; \
	fi
	$(BIN)/python -m pytest -m browser tests/test_view_browser.py

# The same model, decoder and loader tests under transformers 5.x, in a second venv (its own pinned set;
# `make setup` keeps the verified 4.57.6 stack). The venv ignores itself in git.
VENV5 ?= .venv-tf5
test-transformers5:
	$(PYTHON) -m venv $(VENV5)
	echo '*' > $(VENV5)/.gitignore
	$(VENV5)/bin/pip install torch==2.13.0
	$(VENV5)/bin/pip install -r requirements-transformers5.txt
	$(VENV5)/bin/python -m pytest -m "slow or not slow" tests/test_model.py tests/test_decoding.py tests/test_sdar_compat.py

quickstart:
	$(BIN)/python scripts/quickstart.py

bench:
	$(BIN)/python -m benchmarks.bench_decoding
	$(BIN)/python -m benchmarks.bench_training
	$(BIN)/python -m benchmarks.bench_data
	$(BIN)/python -m benchmarks.bench_memory
	$(BIN)/python -m benchmarks.bench_loss_memory
