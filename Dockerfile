# dockyard's own image: the `dockyard` command with runc (its executor) and qemu-user-static
# (to build for other architectures), for linux/amd64 and linux/arm64.
#
#   make image        dockyard builds this file for both platforms and checks the result
#                     (devkit/image.py; see the README's "dockyard's own image")
#
# It sits at the repository's root because its context is the repository: `pip install .`
# needs pyproject.toml and the package folders, and `dockyard build .` (or `docker build .`)
# then works as written.  .dockerignore keeps the tests, docs and local state out.
#
# The base is an argument: `make image` points it at a Debian bookworm index (amd64 and
# arm64) made by debootstrap and pushed to a loopback registry; anywhere else the default,
# Docker Hub's debian:bookworm-slim, is the same Debian.
ARG DEBIAN_IMAGE=debian:bookworm-slim

# --- packages: the wheel and its dependencies, for the target, made on the build machine --
# Everything here runs natively ($BUILDPLATFORM): pip only downloads and unpacks wheels, for
# the target's architecture (--platform/--only-binary), so an arm64 image runs nothing
# of pip under emulation.  The result is one directory tree copied into the final stage.
FROM --platform=$BUILDPLATFORM ${DEBIAN_IMAGE} AS packages
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-pip \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
ARG TARGETARCH
# --target installs nothing into this stage's Python (so Debian's "externally managed"
# guard does not apply); the scripts pip writes start with #!/usr/bin/python3, which the
# final stage has too.  Both stages share bookworm's Python 3.11 and glibc 2.36: wheels
# for cp311 and any manylinux up to glibc 2.36 fit.
RUN --mount=type=cache,target=/root/.cache/pip \
    set -eu; \
    case "$TARGETARCH" in \
      amd64) machine=x86_64 ;; \
      arm64) machine=aarch64 ;; \
      *) echo "dockyard's image is built for amd64 and arm64, not $TARGETARCH" >&2; exit 1 ;; \
    esac; \
    platforms="--platform manylinux2014_$machine"; \
    for glibc in $(seq 17 36); do platforms="$platforms --platform manylinux_2_${glibc}_$machine"; done; \
    python3 -m pip wheel --no-deps --wheel-dir /wheels .; \
    site=$(python3 -c 'import sys; print("/usr/local/lib/python3.%d/dist-packages" % sys.version_info[1])'); \
    python3 -m pip install --disable-pip-version-check --root-user-action=ignore \
      --target "/out$site" --only-binary=:all: --implementation cp --python-version 3.11 \
      --abi cp311 $platforms /wheels/*.whl; \
    mkdir -p /out/usr/local; \
    mv "/out$site/bin" /out/usr/local/bin

# --- the image: Debian's Python, runc and QEMU, and the tree above --------------------------
# binfmt-support: update-binfmts, with which helm/dockyard's binfmt init container registers
# QEMU's handlers on the node.  Of qemu-user-static's ~30 emulators (~450 MB) only those of
# the architectures dockyard's workers run stay (QEMU_TARGETS; "all" keeps every one).
FROM ${DEBIAN_IMAGE}
ARG QEMU_TARGETS="aarch64 x86_64"
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 runc qemu-user-static binfmt-support \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \
 && if [ "$QEMU_TARGETS" != all ]; then \
      for binary in /usr/bin/qemu-*-static; do \
        target=${binary#/usr/bin/qemu-}; target=${target%-static}; \
        case " $QEMU_TARGETS " in *" $target "*) continue ;; esac; \
        rm -f "$binary" "/usr/libexec/qemu-binfmt/$target-binfmt-P" \
          "/usr/share/binfmts/qemu-$target" "/var/lib/binfmts/qemu-$target" \
          "/usr/lib/binfmt.d/qemu-$target.conf"; \
      done; \
    fi
COPY --from=packages /out/ /
ENTRYPOINT ["dockyard"]
CMD ["--help"]
