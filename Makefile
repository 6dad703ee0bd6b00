# README command 1: `make demo`; README command 2: `make test`. Both run `make setup` first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# Nothing the tests, benchmarks or demo start may ask a cloud metadata service (network rule:
# loopback only); the cloud SDKs' credential chains would, when no credentials are given.
export AWS_EC2_METADATA_DISABLED := true
export ALIBABA_CLOUD_ECS_METADATA_DISABLED := true
# The real node (`podgate sandbox up --node kubelet`): containerd, runc, the CNI plugins, the
# firewall tools its guard and `down` use, gcc for the pause program, busybox for the web image.
NODE_PACKAGES := containerd runc containernetworking-plugins iptables nftables conntrack iproute2 \
	gcc libc6-dev busybox-static
# `make image` and its tests: buildah, and mmdebstrap for a Debian base (no registry is reachable)
IMAGE_PACKAGES := buildah mmdebstrap
DEB_PACKAGES := etcd-server haproxy prometheus make ca-certificates $(NODE_PACKAGES) $(IMAGE_PACKAGES)
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml sandbox/pyproject.toml | sha1sum | cut -c1-12)

.PHONY: setup system venv binaries test lint unit contract e2e e2e-real-node demo bench image image-lock clean

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

# kube-apiserver, kube-controller-manager, kubelet, kube-proxy and kubectl of the newest supported
# release (the default), and the control plane and kubectl of the oldest (its compatibility run
# uses the node agent), built from the Go module proxy with the machine's Go (/usr/local/go
# first; podgate_sandbox.gobuild): cached per version, rebuilt only when missing or broken.
OLDEST_KUBERNETES := 1.34
binaries: venv
	$(VENV)/bin/podgate sandbox install
	$(VENV)/bin/podgate sandbox install --kubernetes $(OLDEST_KUBERNETES) --node agent

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

# only the real node's tests (kubelet, containerd, kube-proxy; root): part of `make e2e` too
e2e-real-node: setup
	$(VENV)/bin/pytest -q -m real_node tests/e2e/test_real_node.py

# Everything on the newest release, then the compatibility subset (tests marked `compat`: seed
# 000's flow, a gated rollout, the drain hook, the eviction guard) on the oldest supported one.
test: lint
	$(VENV)/bin/pytest -q
	PODGATE_KUBERNETES=$(OLDEST_KUBERNETES) $(VENV)/bin/pytest -q -m compat tests/e2e

demo: setup
	$(PY) -m podgate_sandbox.demo

bench: setup
	$(PY) bench/sandbox_bench.py
	$(PY) bench/gate_latency.py
	$(PY) bench/rollout.py
	$(PY) bench/termination.py
	$(PY) bench/cloud_calls.py
	$(PY) bench/scale.py
	$(PY) bench/churn.py
	$(PY) bench/real_node.py

# The Dockerfile's image without a Docker engine (buildah, a Debian base from mmdebstrap):
# an OCI archive at dist/podgate-image.tar.
image: setup
	$(PY) -m podgate_sandbox.image --out dist/podgate-image.tar

# Re-pin the image: the Debian bases' packages as the mirror has them now (image/debian-*.lock)
# and the Python dependencies with hashes (image/*requirements.txt, pip-tools). Review the diff.
image-lock: setup
	$(PY) -m podgate_sandbox.image --lock

clean:
	rm -rf $(VENV) build dist *.egg-info
