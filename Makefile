# Quick start: `make demo` and `make test` on a fresh machine. The venv gets torch first: on a machine without a
# CUDA GPU the CPU build from PyTorch's CPU index when that index answers within 5 s, else the plain requirement as
# pip resolves it (tools/torch_index.py says which, and why); then this checkout with every extra.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-slow test-all lint format clean study study-mnist1d study-pystdlib study-digits study-figures

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $$($(BIN)/python tools/torch_index.py) $(TORCH)
	$(BIN)/pip install -q -e '.[cli,plot,test,lightning,transformers,peft,study]'
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

# The study of docs/STUDY.md: what FreezeOut buys against training shorter, on MNIST-1D and on the standard
# library's bytes (and the digits sweep of docs/SWEEP.md). Each seed's runs train in lockstep in one process on one
# thread; `make -j2 study` runs the sweeps side by side, one per core. A sweep resumes where it stopped; finished
# runs are read back. Each ends with its figure and table; `make study-figures` redraws them from the files alone.
STUDY := docs/study
STUDY_RUN := OMP_NUM_THREADS=1 $(BIN)/freezeout sweep --device cpu --lockstep --no-progress
STUDY_GRID := --t0 0.5 0.65 0.8 0.9 --shorter 0.5 0.6 0.7 0.8 0.9
STUDY_PLOT := $(BIN)/freezeout plot --figure 2 --sweep
MNIST1D := --dataset mnist1d --model resnet1d --depth 20 --growth 8 --epochs 20 --batch-size 100 --seeds 0 1 2 3 4
PYSTDLIB := --dataset pystdlib --model gpt --depth 4 --growth 64 --epochs 20 --batch-size 16 --optimizer adamw \
	--lr 0.002 --weight-decay 0.1 --warmup-steps 20 --seeds 0 1 2
DIGITS := --dataset digits --depth 40 --growth 12 --epochs 15 --t0 0.5 0.65 0.8 --seeds 0 1 2 --shorter 0.4 0.6 0.8

study: study-mnist1d study-pystdlib study-digits

study-mnist1d: venv
	$(STUDY_RUN) $(MNIST1D) $(STUDY_GRID) --out $(STUDY)/mnist1d
	$(STUDY_PLOT) $(STUDY)/mnist1d --out $(STUDY)/mnist1d

study-pystdlib: venv
	$(STUDY_RUN) $(PYSTDLIB) $(STUDY_GRID) --out $(STUDY)/pystdlib
	$(STUDY_PLOT) $(STUDY)/pystdlib --out $(STUDY)/pystdlib

study-digits: venv
	$(STUDY_RUN) $(DIGITS) --out docs/sweep/digits-L40
	$(STUDY_PLOT) docs/sweep/digits-L40 --out docs/sweep/digits-L40

study-figures: venv
	for sweep in $(STUDY)/mnist1d $(STUDY)/pystdlib docs/sweep/digits-L40; do \
		if [ -d $$sweep ]; then $(STUDY_PLOT) $$sweep --out $$sweep || exit 1; else echo "$$sweep: not run yet"; fi; done
