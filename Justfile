# swarmlet tasks. `just` lists them; `./bootstrap.sh deps` installs what they need.

set shell := ["bash", "-euo", "pipefail", "-c"]

# Architectures `cross-build` knows; cross/README.md says how to add one.
arches := "aarch64 x86_64"

# The binary must fit small edge boxes: `just size` fails above this (8 MiB).
max_size_bytes := "8388608"

# Tests that need root are marked `#[ignore = "needs root..."]`: run as root (as CI is),
# `test` and `qemu-test` run them too; elsewhere nextest reports them skipped.
ignored_tests := if `id -u` == "0" { "--run-ignored all" } else { "" }

# Benchmark-style tests (named bench_*, ignored, run by `just bench`) never run in `test`:
# this filter leaves them out, and nextest reports them skipped.
no_bench_tests := "not test(/(^|::)bench_/)"

# List the recipes.
default:
    @just --list

# Release build for this host.
build:
    cargo build --release

# All unit and integration tests, with cargo-nextest; those that need root only when run
# as root. The virtual-machine tests (tests/qemu.rs) boot the static x86_64 binary, so it
# is built first.
test:
    just cross-build x86_64
    cargo nextest run --workspace --all-targets {{ignored_tests}} -E '{{no_bench_tests}}'

# Only the virtual-machine tests, with ARCH guests (x86_64 or aarch64).
qemu-test ARCH="x86_64":
    just cross-build {{ARCH}}
    SWARMLET_QEMU_ARCH={{ARCH}} cargo nextest run --test qemu {{ignored_tests}} -E '{{no_bench_tests}}'

# Formatting and clippy, warnings denied; the fuzz targets (a crate of their own) must
# still build, so an API change cannot leave them behind.
lint:
    cargo fmt --check
    cargo clippy --all-targets -- -D warnings
    cargo fmt --check --manifest-path fuzz/Cargo.toml
    cargo check --manifest-path fuzz/Cargo.toml --bins

# Every benchmark (BENCH lines), with Docker Swarm measured side by side. The VM bench
# boots the static binaries, so both arches are built first.
bench:
    ./bootstrap.sh peers
    cargo bench --bench transport
    cargo bench --bench cluster
    cargo bench --bench runtime
    cargo bench --bench services
    cargo bench --bench network
    just cross-build
    cargo bench --bench vm
    cargo test --release --lib gossip::tests::bench_ -- --ignored --nocapture

# Run every cargo-fuzz target in fuzz/ for SECONDS each, on stable via RUSTC_BOOTSTRAP.
fuzz SECONDS="30":
    #!/usr/bin/env bash
    set -euo pipefail
    command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
    # cargo-fuzz passes nightly-only flags (-Zsanitizer=address); RUSTC_BOOTSTRAP lets the
    # stable toolchain accept them, so no nightly toolchain is needed.
    export RUSTC_BOOTSTRAP=1
    targets=$(cargo fuzz list --fuzz-dir fuzz)
    if [ -z "$targets" ]; then echo "no fuzz targets in fuzz/" >&2; exit 1; fi
    for target in $targets; do
        echo "== fuzz $target for {{SECONDS}} s"
        cargo fuzz run --fuzz-dir fuzz "$target" -- -max_total_time={{SECONDS}}
    done

# Static, stripped musl binaries at target/<triple>/release/swarmlet (ARCH: aarch64, x86_64; empty: both).
cross-build ARCH="":
    #!/usr/bin/env bash
    set -euo pipefail
    requested="{{ARCH}}"
    for arch in ${requested:-{{arches}}}; do
        case "$arch" in
            aarch64|x86_64) ;;
            *) echo "cross-build: unknown arch '$arch' (known: {{arches}})" >&2; exit 2 ;;
        esac
        triple="$arch-unknown-linux-musl"
        cargo build --release --target "$triple" --config cross/config.toml
        bin="target/$triple/release/swarmlet"
        # A dynamically linked result would not run on the target boxes: fail here, not there.
        # (x86_64 musl links static-pie, aarch64 plain static; both need no loader.)
        if ! file "$bin" | grep -Eq 'statically linked|static-pie linked'; then
            echo "cross-build: $bin is not statically linked: $(file -b "$bin")" >&2
            exit 1
        fi
        echo "$bin: $(file -b "$bin")"
    done

# Size of each arch's stripped binary; fails if any is above 8 MiB.
size:
    #!/usr/bin/env bash
    set -euo pipefail
    # A no-op when the binaries are up to date; never reports a stale size.
    just cross-build >/dev/null
    status=0
    for arch in {{arches}}; do
        bin="target/$arch-unknown-linux-musl/release/swarmlet"
        bytes=$(stat -c %s "$bin")
        mib=$(awk -v b="$bytes" 'BEGIN { printf "%.2f", b / 1048576 }')
        echo "$bin $bytes bytes ($mib MiB)"
        if [ "$bytes" -gt {{max_size_bytes}} ]; then
            echo "size: $bin is above 8 MiB" >&2
            status=1
        fi
    done
    exit "$status"

# The seed's walk through Swarm mode (examples/demo/): a three-node cluster in network
# namespaces on this machine, a registry beside it, services created, scaled, moved off
# a cut node and updated; everything removed after. Needs root (asks sudo otherwise).
# A debug build, as the tests use: it builds in a fraction of a release build's time.
demo:
    #!/usr/bin/env bash
    set -euo pipefail
    cargo build --bin swarmlet --example demo
    demo="${CARGO_TARGET_DIR:-target}/debug/examples/demo"
    if [ "$(id -u)" -eq 0 ]; then exec "$demo"; else exec sudo "$demo"; fi

# The encrypted transport between two endpoints on loopback.
transport-demo:
    cargo run --release -- debug transport demo

# Seeds start at the clock (or BASE) so each run explores new ones; a failure prints the
# seed, and SIM_SEED=<seed> cargo test --lib raft::sim::replay (or sim::control::replay,
# sim::orchestrator::replay) replays it.
# Run N more seeds of the Raft, control-plane and orchestrator simulations (release build;
# the orchestrator's 10,000 take about an hour on two cores).
sim N="10000" BASE="":
    #!/usr/bin/env bash
    set -euo pipefail
    base="{{BASE}}"
    base=${base:-$(date +%s)}
    echo "sim: seeds $base..$((base + {{N}}))"
    export SIM_SEEDS={{N}} SIM_SEED_BASE=$base CARGO_PROFILE_RELEASE_PANIC=unwind
    cargo test --release --lib raft::sim::replay -- --nocapture
    cargo test --release --lib sim::control::replay -- --nocapture
    cargo test --release --lib sim::orchestrator::replay -- --nocapture
