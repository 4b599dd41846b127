# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: demo test venv podman lint-zeek btest bench clean zeek-data

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/stowaway demo --out demo-out

podman:
	@bash .ci/setup-podman.sh || echo "podman set-up failed: podman tests will be skipped"

# The whole suite: unit, Thrift (osqueryd emulation), Zeek script parse, fixtures end to end,
# real podman containers where podman is available, and the btest suite on real Zeek
# (tests/test_zeek_package.py runs it; skipped only when `zeek` is not on PATH, and
# STOWAWAY_REQUIRE_ZEEK=1, set by .ci/run when it installed Zeek, turns that skip into a failure).
test: $(STAMP) podman
	$(PY) -m pytest -q -ra tests

# The btest suite alone (needs zeek and zeek-cut on PATH; btest-diff comes from the venv).
btest: $(STAMP)
	cd testing && PATH="$(abspath $(VENV))/bin:$$PATH" btest -c btest.cfg -j 2

lint-zeek: $(STAMP)
	$(PY) -m pytest -q tests/test_zeek_package.py

zeek-data: $(STAMP)
	$(PY) -m osquery_ext.indicators --export-zeek zeek_scripts/data

bench: $(STAMP)
	@fail=""; for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || fail="$$fail $$b"; done; \
	for s in conn dns; do echo "== bench/bench_ingest.py --stream $$s"; \
		$(PY) bench/bench_ingest.py --stream $$s || fail="$$fail bench_ingest($$s)"; done; \
	if [ -n "$$fail" ]; then echo "targets missed in:$$fail"; exit 1; fi

clean:
	rm -rf $(VENV) demo-out .pytest_cache
