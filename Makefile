# Two commands on a fresh machine:  `make run`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
REQ_HASH := $(shell sha256sum requirements.txt | cut -c1-16)
STAMP  := $(VENV)/.installed-$(REQ_HASH)
PORT   ?= 8501
PYTEST_ARGS ?=
BENCH_ARGS ?=
RELEASE_DATA ?= ../shared/data/kermany-224
RESULTS_ARGS ?=

.PHONY: install run demo release test lint browser-deps bench results clean-demo

$(STAMP): requirements.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	@rm -f $(VENV)/.installed-*
	@touch $@

install: $(STAMP)

## Set up and serve the committed release registry (real models; CXR_REGISTRY=DIR serves another).
run: install
	$(BIN)/streamlit run app.py --server.port $(PORT)

## Build the synthetic demo registry in ./registry (unless it has a classifier) and serve it.
demo: install
	$(BIN)/python -m train.demo --out registry --if-missing
	CXR_REGISTRY=registry $(BIN)/streamlit run app.py --server.port $(PORT)

## Rebuild the release registry from kermany-224 (CPU, about an hour and a half on two cores).
release: install
	$(BIN)/python -m train.release --data $(RELEASE_DATA) --out release/kermany-224

## Debian's chromium at /usr/bin/chromium for the browser tests (apt-get, root only). Locally a failed
## install is a warning and those tests skip with the reason; with CI set (not false) it is an error.
browser-deps:
	@test -x /usr/bin/chromium || { \
	  ci=$$(printf '%s' "$${CI:-}" | tr A-Z a-z); case "$$ci" in ""|0|false|no|off) ci=;; esac; \
	  if [ "$$(id -u)" = "0" ] && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	     && test -x /usr/bin/chromium; then echo "installed /usr/bin/chromium"; \
	  elif [ -n "$$ci" ]; then echo "error: /usr/bin/chromium is absent and could not be installed (CI)" >&2; exit 1; \
	  elif [ "$$(id -u)" = "0" ]; then echo "warning: could not install chromium; browser tests will skip"; \
	  else echo "note: /usr/bin/chromium is absent and this is not root; browser tests will skip"; fi; }

## Set up and run the whole test suite.
test: install browser-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi; exit $$rc

lint: install
	$(BIN)/ruff check .

## Every benchmark into docs/BENCHMARKS.md, e.g. BENCH_ARGS="--registry R --image X.jpeg".
bench: install browser-deps
	$(BIN)/python -m bench.report $(BENCH_ARGS)

## docs/RESULTS.md from the release cards (RESULTS_ARGS adds roots, e.g. "--root registry-research").
results: install
	$(BIN)/python -m train.results --root release/kermany-224 --levers docs/results/levers.jsonl --ensembles docs/results/ensembles.jsonl $(RESULTS_ARGS)
