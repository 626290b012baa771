#!/usr/bin/env bash
# Runs every example of the workspace (every <crate>/examples/*.rs) once and fails if any fails.
# Each example checks itself (asserts what it shows, exits 0), needs no network beyond loopback and
# finishes in a few seconds; each gets EXAMPLE_TIMEOUT seconds (default 30) all the same.
# Usage: scripts/examples.sh [-v]   (-v prints every example's output, not only a failing one's)
set -euo pipefail
cd "$(dirname "$0")/.."
verbose=${1:-}
limit=${EXAMPLE_TIMEOUT:-30}
target=${CARGO_TARGET_DIR:-target}

# The packages that have examples (the package name from each crate's Cargo.toml).
packages=()
for dir in */examples; do
    crate_dir=${dir%%/*}
    packages+=(-p "$(sed -n 's/^name = "\(.*\)"$/\1/p' "$crate_dir/Cargo.toml" | head -n 1)")
done
echo "building the examples of $((${#packages[@]} / 2)) packages"
cargo build --quiet --examples "${packages[@]}"

log=$(mktemp)
trap 'rm -f "$log"' EXIT
count=0
start=${EPOCHREALTIME/./}   # microseconds (bash 5)
for file in */examples/*.rs; do
    crate_dir=${file%%/*}
    package=$(sed -n 's/^name = "\(.*\)"$/\1/p' "$crate_dir/Cargo.toml" | head -n 1)
    name=$(basename "$file" .rs)
    t0=${EPOCHREALTIME/./}
    if ! timeout "$limit" "$target/debug/examples/$name" >"$log" 2>&1; then
        cat "$log"
        echo "FAILED: cargo run -p $package --example $name" >&2
        exit 1
    fi
    [ "$verbose" = -v ] && cat "$log"
    count=$((count + 1))
    ms=$(((${EPOCHREALTIME/./} - t0) / 1000))
    printf '%-40s ok %6d ms\n' "$package/$name" "$ms"
done
ms=$(((${EPOCHREALTIME/./} - start) / 1000))
printf 'examples: all %d ran and checked themselves in %d ms\n' "$count" "$ms"
