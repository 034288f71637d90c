# dockyard's developer and CI entry points.
#
#   make setup   Debian packages, arm64 busybox, binfmt for arm64, .venv, and the `dockyard`
#                command in $(BINDIR) (a symlink to .venv/bin/dockyard) (idempotent)
#   make demo    setup, then print the build graph of examples/ for amd64 and arm64
#   make image   setup, then dockyard builds its own image (Dockerfile) for amd64 and arm64,
#                pushes it to a loopback registry and runs `dockyard --version` in each
#                (devkit/image.py; first run ~15 min, then ~1 min; not in demo or test)
#   make test    setup, ruff, mypy --strict, then pytest over tests/
#                (ruff without its cache: a stale cache can hide what a fresh CI clone sees)
#   make lint    ruff, then mypy --strict over the four packages
#   make faults  setup, then kill builds at random moments, seeds $(FAULT_SEEDS), $(FAULT_ROUNDS)
#                rounds each (devkit/faults.py; about 5 min on 2 cpus)
#   make load    setup, then waves of 20 concurrent builds for $(LOAD_SECONDS) s (devkit/load.py)
#   make clean   remove .venv, its $(BINDIR)/dockyard link and tool caches (not the Debian
#                packages, not $(CACHE_DIR))
#
# Written for a fresh Debian 12 machine, as root, with only the Debian and PyPI registries
# reachable.  Every step checks first and does nothing when its work is already done.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.ONESHELL:
.DEFAULT_GOAL := test

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.dockyard-installed
# Where `make setup` puts the `dockyard` command, so that a shell finds it as the README
# writes it (the console script itself lives in .venv/bin).
BINDIR ?= /usr/local/bin
# The four packages as installed (pyproject.toml maps each top-level folder under dockyard.)
PACKAGES := dockyard.scheduler dockyard.workers dockyard.cache_backends dockyard.cluster

# Extracted arm64 busybox (see busybox-arm64 below): tests find it at
# $(CACHE_DIR)/busybox-arm64/bin/busybox.
CACHE_DIR ?= /var/cache/dockyard

# What the project needs on the host, now and in the next issues:
#   docker.io          Docker 20.10 (/usr/bin/docker, /usr/sbin/dockerd): the BuildKit oracle
#   containerd, runc   dockerd's runtime; runc is also dockyard's own executor
#   qemu-user-static, binfmt-support   run arm64 binaries on amd64
#   docker-registry    a loopback OCI registry for push/pull tests
#   busybox-static     the amd64 busybox for base images built by the tests
#   skopeo, umoci      copy and inspect OCI images in tests
#   git                ADD of git sources
#   openssh-client     ssh-agent, ssh-add, ssh-keygen: --ssh ID=KEYFILE
#   iptables           needed by dockerd's package even with --iptables=false
#   debootstrap        the Debian bookworm base of the benchmarks' debian-* cases
#                      (benchmarks/_debian_base.py; its result cached in $(CACHE_DIR))
#   golang-go, golang-github-masterminds-sprig-dev, golang-k8s-sigs-yaml-dev
#                      Helm's template engine for helm/tools/render, which the chart's
#                      tests build offline (GOPATH mode over /usr/share/gocode): no helm
#                      binary is reachable from these machines
DEB_PACKAGES := docker.io containerd runc qemu-user-static binfmt-support docker-registry \
	busybox-static skopeo umoci git iptables ca-certificates openssh-client debootstrap \
	golang-go golang-github-masterminds-sprig-dev golang-k8s-sigs-yaml-dev

export DEBIAN_FRONTEND := noninteractive

.PHONY: setup demo image test lint faults load clean debs busybox-arm64 binfmt venv cli

FAULT_SEEDS ?= 1,2,3,4
FAULT_ROUNDS ?= 10
LOAD_SECONDS ?= 240

setup: debs busybox-arm64 binfmt venv cli

demo: setup
	$(VENV)/bin/python examples/demo.py

image: setup
	$(VENV)/bin/python -m devkit.image

test: setup
	$(VENV)/bin/ruff check --no-cache .
	$(VENV)/bin/mypy --strict $(addprefix -p ,$(PACKAGES))
	$(VENV)/bin/python -m pytest tests/ -q

lint: venv
	$(VENV)/bin/ruff check --no-cache .
	$(VENV)/bin/mypy --strict $(addprefix -p ,$(PACKAGES))

faults: setup
	$(VENV)/bin/python -m devkit.faults --seeds $(FAULT_SEEDS) --rounds $(FAULT_ROUNDS)

load: setup
	$(VENV)/bin/python -m devkit.load --seconds $(LOAD_SECONDS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info
	[ "$$(readlink $(BINDIR)/dockyard 2>/dev/null)" != "$(abspath $(VENV))/bin/dockyard" ] \
	  || rm -f $(BINDIR)/dockyard
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

# --- Debian packages: install only the missing ones; apt-get update only then. ---------
debs:
	@missing=()
	for pkg in $(DEB_PACKAGES); do
	  dpkg-query -W -f='$${Status}' "$$pkg" 2>/dev/null | grep -q 'install ok installed' \
	    || missing+=("$$pkg")
	done
	if ! $(PYTHON) -c 'import ensurepip' 2>/dev/null; then missing+=(python3-venv); fi
	if [ $${#missing[@]} -eq 0 ]; then exit 0; fi
	echo "installing Debian packages: $${missing[*]}"
	log=$$(mktemp); trap 'rm -f "$$log"' EXIT
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "$${missing[@]}" >"$$log" 2>&1 \
	  || { cat "$$log"; exit 1; }

# --- arm64 busybox -----------------------------------------------------------------------
# busybox-static is not Multi-Arch: same, so busybox-static:arm64 conflicts with the amd64
# package.  We download the arm64 .deb and unpack it into $(CACHE_DIR) instead.
busybox-arm64: debs
	@bb=$(CACHE_DIR)/busybox-arm64/bin/busybox
	if [ -x "$$bb" ]; then exit 0; fi
	if ! dpkg --print-foreign-architectures | grep -qx arm64; then
	  dpkg --add-architecture arm64
	fi
	if ! apt-cache show busybox-static:arm64 >/dev/null 2>&1; then apt-get update -qq; fi
	tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; chown _apt "$$tmp" 2>/dev/null || true
	(cd "$$tmp" && apt-get download -qq busybox-static:arm64)
	mkdir -p $(CACHE_DIR)/busybox-arm64
	dpkg-deb -x "$$tmp"/busybox-static_*_arm64.deb $(CACHE_DIR)/busybox-arm64
	echo "arm64 busybox unpacked at $$bb"

# --- binfmt_misc: let the kernel run aarch64 binaries through qemu ---------------------
# A kernel that refuses is a warning, not a failure: only arm64 execution tests need it.
binfmt: debs busybox-arm64
	@warn() { echo "WARNING: $$*; arm64 binaries will not run on this host" >&2; exit 0; }
	dir=/proc/sys/fs/binfmt_misc
	if [ ! -e $$dir/status ]; then
	  mount -t binfmt_misc binfmt_misc $$dir || warn "cannot mount binfmt_misc"
	fi
	if [ ! -e $$dir/qemu-aarch64 ]; then
	  update-binfmts --enable qemu-aarch64 || warn "cannot register qemu-aarch64"
	fi
	out=$$($(CACHE_DIR)/busybox-arm64/bin/busybox uname -m 2>&1) \
	  || warn "the arm64 busybox does not run: $$out"
	[ "$$out" = aarch64 ] || warn "the arm64 busybox says '$$out', not aarch64"

# --- .venv: the project editable with its test extra, redone when pyproject.toml changes
# (its package-dir mapping of dockyard.* is in the editable install: a .venv made before a
# change of it is reinstalled by the next make).
venv: $(STAMP)

$(STAMP): pyproject.toml
	@[ -x $(VENV)/bin/python ] || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check -e '.[test]' 2>&1 \
	  | { grep -v 'is ignored' || true; }
	touch $@

# --- the `dockyard` command where a shell finds it: $(BINDIR)/dockyard -> .venv/bin/dockyard.
# A $(BINDIR)/dockyard that is not this checkout's symlink (another install) is left alone.
cli: venv
	@link=$(BINDIR)/dockyard; target=$(abspath $(VENV))/bin/dockyard
	if [ "$$(readlink "$$link" 2>/dev/null)" = "$$target" ]; then exit 0; fi
	if [ -e "$$link" ] && [ ! -L "$$link" ]; then
	  echo "WARNING: $$link is not a symlink to $$target: left alone; run $$target" >&2
	  exit 0
	fi
	if ln -sfn "$$target" "$$link" 2>/dev/null; then
	  echo "dockyard installed: $$link -> $$target"
	else
	  echo "WARNING: cannot write $$link; run $$target, or put $(abspath $(VENV))/bin on PATH" >&2
	fi
