# TaxaLens: `make run` opens the dashboard on the demo workspace, `make test` runs ruff and pytest.
# Both set everything up first (venv, requirements, demo workspace); nothing else is needed by hand.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha256sum requirements.txt | cut -c1-12)
WORKSPACE ?= demo_workspace
PORT ?= 8501

.PHONY: setup demo run test lint bench clean

setup: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	rm -f $(VENV)/.installed-* && touch $(STAMP)

demo: setup $(WORKSPACE)/taxalens.toml

$(WORKSPACE)/taxalens.toml:
	$(PY) -m cli demo --out $(WORKSPACE)

run: demo
	$(PY) -m streamlit run app.py --server.port $(PORT) -- --workspace $(WORKSPACE)

lint: setup
	$(VENV)/bin/ruff check .

test: setup
	$(VENV)/bin/ruff check .
	$(PY) -c "from tests.conftest import ensure_demo_workspace; ensure_demo_workspace()"  # outside pytest's per-test timeout
	$(PY) -m pytest

bench: demo
	for script in benchmarks/bench_*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) $(WORKSPACE) .pytest_cache .ruff_cache
