# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.quarklab-installed

.PHONY: demo test bench install world clean browser-deps test-browser

demo: $(STAMP)
	$(BIN)/quarklab notebooks run --run-dir runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The browser suite (browser_tests/, a few minutes): JupyterLab started as the README says, the four notebooks
# opened, run and used in Debian's Chromium through Playwright; screenshots under runs/browser/<timestamp>/.
test-browser: browser-deps
	QUARKLAB_BROWSER_REQUIRED=1 $(BIN)/python -m pytest -q -s browser_tests

# Chromium from Debian's apt (Playwright's own browser download is not reachable here: never `playwright install`),
# Playwright's Python package from the `browser` extra.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
BROWSER_STAMP := $(VENV)/.quarklab-browser-installed
browser-deps: $(BROWSER_STAMP)
	test -x /usr/bin/chromium || { $(SUDO) apt-get update && $(SUDO) apt-get install -y chromium; }

$(BROWSER_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,browser]'
	touch $@

# The benchmark (benchmarks/, about 3 minutes on a 2-core CPU): the table on stdout, everything in bench.json.
bench: $(STAMP)
	$(BIN)/quarklab bench --out bench.json

install: $(STAMP)

world: $(STAMP)
	$(BIN)/quarklab world build

# torch first and pinned: pip takes the CPU build on disk; an unpinned torch pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
