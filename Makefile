# LGAF-Train. Two commands for a newcomer: `make demo` and `make test`.
# Every target installs what it needs (idempotently) before it runs.

SHELL := /bin/bash
VENV := $(CURDIR)/.venv
PYTHON := $(VENV)/bin/python
# The stamp names the exact pins, so changing a pin reinstalls.
VENV_STAMP := $(VENV)/.installed-torch-2.11.0-v1

# torch-sys takes libtorch from the venv's torch wheel: it runs `python` from PATH.
export LIBTORCH_USE_PYTORCH := 1
export PATH := $(VENV)/bin:$(PATH)
CARGO ?= cargo

.PHONY: all venv build demo test lint clean

all: build

venv: $(VENV_STAMP)

$(VENV_STAMP):
	@echo "==> creating the torch virtualenv in .venv (torch 2.11.0, about 2 minutes and 4.7 GB the first time)"
	@test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -r requirements.txt
	@touch $@

build: venv
	$(CARGO) build --release --bins

demo: build
	./target/release/lgaf demo --out demo-out

test: venv
	$(CARGO) test --release --workspace

lint: venv
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean
