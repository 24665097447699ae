#!/usr/bin/env bash
# Set up a fresh Debian 12 machine (with Rust installed by rustup) and run swarmlet's demo or
# tests. Safe to run again: everything already installed is skipped.
#
#   ./bootstrap.sh demo   install what is needed, then `just demo` (a three-node cluster
#                         in network namespaces on this machine; needs root)
#   ./bootstrap.sh test   install what is needed, then `just test`
#   ./bootstrap.sh deps   install what is needed, nothing else
#   ./bootstrap.sh peers  install the peers `just bench` measures against (docker.io),
#                         without letting the system start their daemons
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"

# Debian packages: clang/lld/llvm (llvm-ar) compile C dependencies for the musl targets,
# qemu-user-static runs the aarch64 binary, busybox-static is the userland of the test
# and demo containers, iproute2 makes the demo's and the tests' network namespaces (with
# util-linux's nsenter, which Debian always has), nftables for the networking tests, file
# to check that binaries are static, systemd for `systemd-analyze verify` of the unit (it
# is not made the init system), docker-registry (a real registry for the pull tests and
# the demo), apache2-utils (htpasswd) and openssl (its certificates), qemu-system-x86 and
# qemu-system-arm for the virtual-machine tests.
APT_PACKAGES=(clang lld llvm qemu-user-static busybox-static iproute2 nftables file systemd
    docker-registry apache2-utils openssl ca-certificates qemu-system-x86 qemu-system-arm)
# The aarch64 virtual machines boot Debian's arm64 kernel and busybox, which the tests
# fetch with `apt-get download`: dpkg must know the architecture (nothing is installed).
FOREIGN_ARCHES=(arm64)
RUST_TARGETS=(x86_64-unknown-linux-musl aarch64-unknown-linux-musl)
# The demo's nginx image is made from Debian's nginx package (its binary and the host's
# libraries), fetched here with `apt-get download` and never installed (an installed nginx
# would start serving port 80 on this machine).
DEMO_CACHE=/var/cache/swarmlet-demo

log() { echo "bootstrap: $*" >&2; }

die() {
    log "$*"
    exit 1
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        die "need root to run: $*"
    fi
}

# Packages missing from the list given.
missing_packages() {
    local pkg
    for pkg in "$@"; do
        # dpkg-query prints "install ok installed" only for fully installed packages.
        if [ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" != "install ok installed" ]; then
            echo "$pkg"
        fi
    done
}

# Installs packages without letting their maintainer scripts start any service: tests and
# benchmarks start docker-registry and dockerd themselves, on loopback and in namespaces
# of their own. policy-rc.d (exit 101) is Debian's switch for this; systemd units that
# got enabled are disabled again.
apt_install_quietly() {
    local policy=/usr/sbin/policy-rc.d placed=0 status=0
    if [ ! -e "$policy" ]; then
        as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy"
        placed=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q || status=$?
    if [ "$status" -eq 0 ]; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
            --no-install-recommends "$@" || status=$?
    fi
    [ "$placed" -eq 0 ] || as_root rm -f "$policy"
    [ "$status" -eq 0 ] || die "apt-get failed installing $*"
    if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
        as_root systemctl disable --now docker-registry.service docker.service docker.socket \
            >/dev/null 2>&1 || true
    fi
}

install_apt_packages() {
    local missing
    mapfile -t missing < <(missing_packages "${APT_PACKAGES[@]}")
    if [ "${#missing[@]}" -gt 0 ]; then
        log "installing Debian packages: ${missing[*]}"
        apt_install_quietly "${missing[@]}"
    fi
}

add_foreign_arches() {
    local arch known
    known=$(dpkg --print-foreign-architectures)
    for arch in "${FOREIGN_ARCHES[@]}"; do
        if ! grep -qx "$arch" <<<"$known"; then
            log "adding the $arch architecture to dpkg (package lists only)"
            as_root dpkg --add-architecture "$arch"
            as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q ||
                die "apt-get update failed after adding $arch"
        fi
    done
}

install_rust_targets() {
    local installed missing=()
    local target
    installed=$(rustup target list --installed)
    for target in "${RUST_TARGETS[@]}"; do
        grep -qx "$target" <<<"$installed" || missing+=("$target")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        log "adding Rust targets: ${missing[*]}"
        rustup target add "${missing[@]}"
    fi
}

install_cargo_tool() {
    local command=$1 crate=$2
    if ! command -v "$command" >/dev/null; then
        log "installing $crate (cargo install, takes a few minutes)"
        cargo install "$crate" --locked
    fi
}

fetch_demo_packages() {
    if ! compgen -G "$DEMO_CACHE/nginx_*.deb" >/dev/null; then
        log "fetching Debian's nginx package into $DEMO_CACHE (not installed)"
        as_root mkdir -p "$DEMO_CACHE"
        (cd "$DEMO_CACHE" && as_root apt-get download -q nginx) ||
            die "apt-get download nginx failed"
    fi
}

deps() {
    # rustup and cargo install put tools here; a non-login shell may not have it on PATH yet.
    export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
    if ! command -v cargo >/dev/null || ! command -v rustup >/dev/null; then
        die "cargo and rustup are needed: install Rust from https://rustup.rs first"
    fi
    add_foreign_arches
    install_apt_packages
    fetch_demo_packages
    install_rust_targets
    install_cargo_tool just just
    install_cargo_tool cargo-nextest cargo-nextest
}

# Docker Swarm, runc and skopeo are measured side by side in `just bench` (Docker Swarm
# in network namespaces of the bench's own). The system's docker service must never
# start: it rewrites netfilter rules.
PEER_PACKAGES=(docker.io runc skopeo)

install_peers() {
    local missing
    mapfile -t missing < <(missing_packages "${PEER_PACKAGES[@]}")
    if [ "${#missing[@]}" -gt 0 ]; then
        log "installing benchmark peers (their services stay off): ${missing[*]}"
        apt_install_quietly "${missing[@]}"
    fi
}

usage() {
    echo "usage: $0 demo|test|deps|peers" >&2
    exit 2
}

[ "$#" -eq 1 ] || usage
case "$1" in
    demo | test | deps | peers) ;;
    *) usage ;;
esac
# Called on its own, not in an && list, so that set -e stays in force inside it.
deps
case "$1" in
    demo) exec just demo ;;
    test) exec just test ;;
    peers) install_peers ;;
esac
