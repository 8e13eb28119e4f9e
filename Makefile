# The two set-up commands of the README: `make demo` and `make test`. Everything else they need
# is installed here, into a virtual environment in .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel of torch; an unpinned torch pulls a CUDA build of several GB.
TORCH := torch==2.13.0
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels)
PIP := $(BIN)/python -m pip install -q --disable-pip-version-check $(FIND_LINKS)
DEMO_DIR ?= out

.PHONY: demo test install install-dev data clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.core: pyproject.toml | $(BIN)/python
	$(PIP) $(TORCH) -e '.[data]'
	touch $@

$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(PIP) $(TORCH) -e '.[dev]'
	touch $@ $(VENV)/.core

install: $(VENV)/.core
install-dev: $(VENV)/.dev

# The main job: a grid from the model shipped in the repository, on the CPU.
demo: install
	$(BIN)/unclip generate "a grinning cat, 3D style" --num-images 4 --out $(DEMO_DIR)/demo.png

# The whole unit suite, offline, on the CPU (Debian chromium for the web page test, g++ for torch.compile).
test: install-dev
	scripts/install_system_deps.sh
	$(BIN)/python -m pytest

# The full dataset (network: the npm registry), into ~/.cache/unclip/data/emoji.
data: install
	$(BIN)/unclip data build
	$(BIN)/unclip data stats

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
