# scalelab: `make demo` and `make test` set up .venv when missing, then run.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PIP     := $(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt
# Demo settings: the run directory and how many minutes of pretraining.
RUN     ?= runs/demo
export PYTHONUNBUFFERED := 1

.PHONY: demo test test-fast test-bare lint bench check-gguf setup clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) -e '.[test,data,export,trees]' 2>&1 | grep -v 'is ignored: it is neither a file nor a directory' || true
	$(BIN)/python -c "import scalelab, torch, sklearn, tokenizers, transformers, fastapi" 
	touch $(STAMP)

setup: $(STAMP)
	bash scripts/setup_sandbox.sh || echo "note: no bubblewrap; scalelab eval will skip code-running tasks (see README)"

demo: $(STAMP)
	bash scripts/demo.sh $(RUN)

test: $(STAMP)
	bash scripts/setup_sandbox.sh || echo "note: no bubblewrap; the sandbox tests skip (and fail where CI=true)"
	bash scripts/setup_browser.sh || echo "note: no Chromium; the browser test will be skipped"
	$(BIN)/python -m pytest -q --timeout 900 tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" tests

# The fast tests as in a clone with nothing beside it: an empty data folder and an empty cache, so every test of a
# public data set must skip with its reason and every other test must bring its own data (tests/fixtures).
test-bare: $(STAMP)
	@empty=$$(mktemp -d) && trap 'rm -rf "$$empty"' EXIT && mkdir "$$empty/data" "$$empty/cache" && \
	  echo "test-bare: SCALELAB_DATA=$$empty/data XDG_CACHE_HOME=$$empty/cache" && \
	  SCALELAB_DATA="$$empty/data" XDG_CACHE_HOME="$$empty/cache" $(BIN)/python -m pytest -q -m "not slow" tests

lint: $(STAMP)
	$(BIN)/ruff check scalelab tests benchmarks

bench: $(STAMP)   # each writes benchmarks/results/<name>.json
	$(BIN)/python benchmarks/bench_mlp.py
	$(BIN)/python benchmarks/bench_pretrain.py
	$(BIN)/python benchmarks/bench_generate.py
	$(BIN)/python benchmarks/bench_serve.py
	$(BIN)/python benchmarks/bench_tokenize_memory.py

check-gguf: $(STAMP)   # GGUF export vs llama.cpp; the first run compiles llama-cpp-python (10+ min on 2 cores)
	$(BIN)/python -c "import llama_cpp" 2>/dev/null || $(BIN)/python -m pip install llama-cpp-python
	$(BIN)/python scripts/check_gguf_llamacpp.py --run $(RUN)

clean:
	rm -rf $(VENV) runs .pytest_cache
