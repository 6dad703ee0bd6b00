# README command 1: `make demo`; README command 2: `make test`. Both run `make setup` first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
DEB_PACKAGES := golang-go etcd-server haproxy prometheus rsync make patch ca-certificates
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: setup system venv binaries test lint unit integration demo bench clean

setup: system venv binaries

# Debian packages: installed only when missing, so `make setup` is cheap when done.
system:
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,demo]'
	rm -f $(VENV)/.installed-*; touch $@

# kube-apiserver and kube-controller-manager built from Debian's source package, kubectl from
# Debian's kubernetes-client: cached per version, rebuilt only when missing or broken.
binaries: venv
	$(VENV)/bin/podgate sandbox install

lint: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

unit: setup
	$(VENV)/bin/pytest -q tests/unit

integration: setup
	$(VENV)/bin/pytest -q tests/integration

test: lint
	$(VENV)/bin/pytest -q

demo: setup
	$(PY) -m podgate.sandbox.demo

bench: setup
	$(PY) bench/sandbox_bench.py
	$(PY) bench/gate_latency.py
	$(PY) bench/rollout.py
	$(PY) bench/cloud_calls.py

clean:
	rm -rf $(VENV) build *.egg-info
