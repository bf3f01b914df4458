# Quick start: `make demo` and `make test` on a fresh machine. The venv gets torch first: on a machine without a
# CUDA GPU the CPU build from PyTorch's CPU index when that index answers within 5 s, else the plain requirement as
# pip resolves it (tools/torch_index.py says which, and why); then this checkout with every extra.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-slow test-all lint format clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $$($(BIN)/python tools/torch_index.py) $(TORCH)
	$(BIN)/pip install -q -e '.[cli,plot,test,lightning,transformers,peft]'
	touch $(STAMP)

demo: venv
	$(BIN)/freezeout demo

test: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

# The tests marked slow (real killed, raced and torchrun processes, compiles, a fresh-venv install), without the
# fuzz runs that draw new random examples each time: CI runs these after `make test`.
test-slow: venv
	$(BIN)/python -m pytest -q -m slow -k "not explore"

test-all: venv
	$(BIN)/python -m pytest -q -m ''

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) build *.egg-info
