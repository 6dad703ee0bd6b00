# README command 1: `make demo`; README command 2: `make test`. Both run `make setup` first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
DEB_PACKAGES := golang-go etcd-server haproxy prometheus rsync make patch ca-certificates buildah mmdebstrap runc
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml sandbox/pyproject.toml | sha1sum | cut -c1-12)

.PHONY: setup system venv binaries test lint unit contract e2e demo bench image clean

setup: system venv binaries

# Debian packages: installed only when missing, so `make setup` is cheap when done.
system:
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

venv: $(STAMP)

# Two distributions from one tree: podgate (the product, what the image holds) and
# podgate-sandbox (sandbox/pyproject.toml: control plane, node agent, lab, cloud API doubles).
$(STAMP): pyproject.toml sandbox/pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]' -e './sandbox[demo]'
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

# tests/unit: no processes; tests/contract: real HAProxy, pip, the API doubles, no cluster;
# tests/e2e: the sandbox (one control plane per session). Markers follow the directory.
unit: setup
	$(VENV)/bin/pytest -q tests/unit

contract: setup
	$(VENV)/bin/pytest -q tests/contract

e2e: setup
	$(VENV)/bin/pytest -q tests/e2e

test: lint
	$(VENV)/bin/pytest -q

demo: setup
	$(PY) -m podgate_sandbox.demo

bench: setup
	$(PY) bench/sandbox_bench.py
	$(PY) bench/gate_latency.py
	$(PY) bench/rollout.py
	$(PY) bench/cloud_calls.py

# The Dockerfile's image without a Docker engine (buildah, a Debian base from mmdebstrap):
# an OCI archive at dist/podgate-image.tar.
image: setup
	$(PY) -m podgate_sandbox.image --out dist/podgate-image.tar

clean:
	rm -rf $(VENV) build dist *.egg-info
