# Two commands on a fresh machine:  `make run`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
REQ_HASH := $(shell sha256sum requirements.txt | cut -c1-16)
STAMP  := $(VENV)/.installed-$(REQ_HASH)
PORT   ?= 8501
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: install run demo test lint browser-deps bench results clean-demo

$(STAMP): requirements.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	@rm -f $(VENV)/.installed-*
	@touch $@

install: $(STAMP)

## Build the synthetic demo registry unless the registry already has a classifier.
demo: install
	$(BIN)/python -m train.demo --if-missing

## Set up, build the demo registry if there is none, and start the app.
run: demo
	$(BIN)/streamlit run app.py --server.port $(PORT)

## Debian's chromium for the browser tests (root only; otherwise those tests skip with a reason).
browser-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = "0" ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "warning: could not install chromium; browser tests will skip"; \
	  else echo "note: chromium is not installed and this is not root; browser tests will skip"; fi; }

## Set up and run the whole test suite.
test: install browser-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi; exit $$rc

lint: install
	$(BIN)/ruff check .

## Every benchmark into docs/BENCHMARKS.md, e.g. BENCH_ARGS="--registry R --image X.jpeg".
bench: install browser-deps
	$(BIN)/python -m bench.report $(BENCH_ARGS)

results: install
	$(BIN)/python -m train.results
