# The two commands a newcomer needs: `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
DEBIAN_PACKAGES := prometheus prometheus-alertmanager docker-compose chromium
DEBIAN_BINARIES := prometheus promtool prometheus-alertmanager amtool docker-compose chromium

.PHONY: test demo generate lint bench system-deps venv clean

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

# Debian's Prometheus, Alertmanager (with promtool/amtool), docker-compose and Chromium:
# the integration tests start the real servers on loopback.
system-deps:
	@missing=""; for b in $(DEBIAN_BINARIES); do command -v $$b >/dev/null || missing="$$missing $$b"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian packages for:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(DEBIAN_PACKAGES) >/dev/null; \
	  else \
	    echo "missing:$$missing -- install with: sudo apt-get install $(DEBIAN_PACKAGES)"; exit 1; \
	  fi; \
	fi

test: system-deps $(STAMP)
	$(VENV)/bin/ruff check exporter healers grafana tests bench examples
	$(PY) -m pytest -q -p no:cacheprovider -n 2

lint: $(STAMP)
	$(VENV)/bin/ruff check exporter healers grafana tests bench examples
	$(VENV)/bin/mypy exporter healers grafana

# Regenerates every committed artefact from the catalog; tests fail when these drift.
generate: $(STAMP)
	$(PY) -m exporter.generate

bench: system-deps $(STAMP)
	$(PY) -m bench.run

demo: system-deps $(STAMP)
	$(PY) -m exporter.demo

clean:
	rm -rf $(VENV) test-artifacts .demo
