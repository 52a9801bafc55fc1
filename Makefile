# The two commands a newcomer needs: `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
# What `make demo` runs (Debian's Prometheus and Alertmanager with promtool/amtool); `make test`
# also needs docker-compose (the compose file is validated), Chromium (the status page is driven) and
# VictoriaMetrics (the fleet test stores the shards' remote_write centrally; vmalert checks the rules).
DEMO_PACKAGES := prometheus prometheus-alertmanager
DEMO_BINARIES := prometheus promtool prometheus-alertmanager amtool
TEST_PACKAGES := $(DEMO_PACKAGES) docker-compose chromium victoria-metrics
TEST_BINARIES := $(DEMO_BINARIES) docker-compose chromium victoria-metrics vmagent vmalert

.PHONY: test demo generate lint bench system-deps demo-deps venv clean

$(STAMP): pyproject.toml setup.py sandbox/pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV) || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's python3-venv"; rm -rf $(VENV); \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null && python3 -m venv $(VENV); \
	  else echo "python3 -m venv failed -- install with: sudo apt-get install python3-venv"; exit 1; fi; }
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[test,sandbox]'
	@# the [sandbox] extra installs ./sandbox; made editable too, so an edit there needs no reinstall
	$(PIP) install --quiet --no-deps -e ./sandbox
	@rm -rf sandbox/build  # setuptools' output from building the extra's (non-editable) sandbox in place
	@touch $(STAMP)

venv: $(STAMP)

# Installs the Debian packages a target needs when a binary is missing (as root), or names them.
define debian_deps
	@missing=""; for b in $(1); do command -v $$b >/dev/null || missing="$$missing $$b"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian packages for:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(2) >/dev/null; \
	  else \
	    echo "missing:$$missing -- install with: sudo apt-get install $(2)"; exit 1; \
	  fi; \
	fi
endef

# the integration tests start the real servers on loopback
system-deps:
	$(call debian_deps,$(TEST_BINARIES),$(TEST_PACKAGES))

demo-deps:
	$(call debian_deps,$(DEMO_BINARIES),$(DEMO_PACKAGES))

test: system-deps $(STAMP)
	$(VENV)/bin/ruff check exporter healers grafana rules sandbox tests bench examples
	$(VENV)/bin/lint-imports --no-cache
	NO_SKIPPED_TESTS=1 $(PY) -m pytest -q -p no:cacheprovider -n 2 --dist loadgroup

lint: $(STAMP)
	$(VENV)/bin/ruff check exporter healers grafana rules sandbox tests bench examples
	$(VENV)/bin/mypy exporter healers grafana rules sandbox
	$(VENV)/bin/lint-imports --no-cache

# Regenerates every committed artefact from the catalog; tests fail when these drift.
generate: $(STAMP)
	$(PY) -m exporter.generate

bench: system-deps $(STAMP)
	$(PY) -m bench.run

demo: demo-deps $(STAMP)
	$(PY) -m sandbox.demo

clean:
	rm -rf $(VENV) test-artifacts .demo build sandbox/build
