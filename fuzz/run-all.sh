#!/usr/bin/env bash
# Builds and runs every cargo-fuzz target for SECONDS each (default 60), starting from the committed
# seed corpora (corpus/TARGET/seed-*). The crypto targets (envelope_open, pnp_server,
# pnp_client, channel_session, node_session) run at least 30 s: each execution seals and opens envelopes or runs
# Noise handshakes, so a few seconds are only a few thousand executions, barely past the first
# operations. turn_server does too: its executions walk whole allocations (MD5 keys, HMAC
# integrity on every request) up to spliced relay connections.
# Uses nightly (AddressSanitizer) when it is installed, else stable without a sanitizer.
# Exits non-zero if any target crashes, fails an assertion or fails to build.
#
#   fuzz/run-all.sh 30
#   FUZZ_ARGS="-use_value_profile=1" fuzz/run-all.sh 300
set -euo pipefail

per_target="${1:-60}"
cd "$(dirname "$0")"

# Targets that get at least this many seconds, whatever SECONDS says.
declare -A min_seconds=([envelope_open]=30 [pnp_server]=30 [pnp_client]=30 [channel_session]=30 [node_session]=30 [turn_server]=30)

if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    fuzz=(cargo +nightly fuzz)
    sanitizer=()
else
    fuzz=(cargo fuzz)
    sanitizer=(-s none)
fi

targets=$("${fuzz[@]}" list)
if [ -z "$targets" ]; then
    echo "no fuzz targets found" >&2
    exit 1
fi

"${fuzz[@]}" build "${sanitizer[@]}"

failed=()
log_dir=$(mktemp -d)
for target in $targets; do
    seconds=$per_target
    if [ "${min_seconds[$target]:-0}" -gt "$seconds" ]; then
        seconds=${min_seconds[$target]}
    fi
    echo "=== $target (${seconds}s, $(find "corpus/$target" -name 'seed-*' 2>/dev/null | wc -l) seeds)"
    mkdir -p "corpus/$target"
    # shellcheck disable=SC2086 # FUZZ_ARGS is a list of libFuzzer flags
    if "${fuzz[@]}" run "${sanitizer[@]}" "$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 ${FUZZ_ARGS:-} \
        >"$log_dir/$target.log" 2>&1; then
        grep -E '^Done [0-9]+ runs|stat::number_of_executed_units|stat::average_exec_per_sec' \
            "$log_dir/$target.log" || true
    else
        echo "!!! $target FAILED; last lines of its log ($log_dir/$target.log):"
        tail -n 40 "$log_dir/$target.log"
        failed+=("$target")
    fi
done

if [ "${#failed[@]}" -ne 0 ]; then
    echo "failed targets: ${failed[*]} (reproducers in fuzz/artifacts/)" >&2
    exit 1
fi
echo "all targets ran clean: $(echo "$targets" | tr '\n' ' ')"
