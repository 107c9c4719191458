# TaxaLens: `make run` opens the dashboard on the demo workspace, `make test` runs ruff and pytest.
# Both set everything up first (venv, requirements, demo workspace); nothing else is needed by hand.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha256sum requirements.txt | cut -c1-12)
WORKSPACE ?= demo_workspace
PORT ?= 8501
# Where the dashboard listens: this machine only by default. `make serve` (or HOST=0.0.0.0 make run) serves a team;
# app.py then refuses to show anything unless sign-in is configured ([auth] in .streamlit/secrets.toml) or ARGS
# holds --allow-anonymous (a trusted network: every page shows a banner).
HOST ?= 127.0.0.1
ARGS ?=
SERVE_HOST ?= 0.0.0.0

.PHONY: setup demo run serve test lint bench clean

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
	$(PY) -m streamlit run app.py --server.address $(HOST) --server.port $(PORT) \
		$(if $(filter 127.% localhost ::1,$(HOST)),,--client.showErrorDetails none) -- --workspace $(WORKSPACE) $(ARGS)

# For a team: listens on every interface. Needs sign-in in .streamlit/secrets.toml, or ARGS=--allow-anonymous.
serve:
	$(MAKE) run HOST=$(SERVE_HOST)

lint: setup
	$(VENV)/bin/ruff check .

# The OpenID Connect provider the sign-in browser tests run on loopback (npm, into that folder only).
OIDC := tests/e2e/oidc
$(OIDC)/node_modules: $(OIDC)/package.json $(OIDC)/package-lock.json
	npm ci --prefix $(OIDC) --no-audit --no-fund
	touch $@

test: setup $(OIDC)/node_modules
	$(VENV)/bin/ruff check .
	$(PY) -c "from tests.conftest import ensure_demo_workspace; ensure_demo_workspace()"  # outside pytest's per-test timeout
	$(PY) -m pytest

# bench_map.py alone defaults to UMAP on 100,000 x 512 (very long on CPU): here PCA at that size, UMAP skipped, plus the
# leak scans on the demo and the planted bccd set. BENCH_MAP_ARGS="--n 100000" adds UMAP back.
BENCH_MAP_ARGS ?= --no-umap --demo $(WORKSPACE) --bccd $(or $(TAXALENS_TEST_DATA),../shared/data)/bccd

bench: demo
	for script in benchmarks/bench_*.py; do echo "== $$script"; \
		if [ "$$script" = benchmarks/bench_map.py ]; then $(PY) $$script $(BENCH_MAP_ARGS) || exit 1; \
		else $(PY) $$script || exit 1; fi; done

clean:
	rm -rf $(VENV) $(WORKSPACE) .pytest_cache .ruff_cache $(OIDC)/node_modules
