#!/usr/bin/env bash
# Builds the cargo-fuzz targets of driftless and runs each for its share of a time budget.
#
#   fuzz/smoke.sh [TOTAL_SECONDS]     (default 60, or $FUZZ_BUDGET_SECONDS; split evenly)
#
# Runs on a stable toolchain through RUSTC_BOOTSTRAP=1 (cargo-fuzz needs nightly flags);
# installs cargo-fuzz when it is missing. New inputs go to a temporary corpus, so the
# committed seeds under fuzz/corpus/ stay as they are. Exits non-zero when a target
# crashes (panic, abort, out-of-memory, sanitizer report); the input is then kept in
# fuzz/artifacts/<target>/ and the last lines of libFuzzer's log are printed.
set -euo pipefail
cd "$(dirname "$0")"

budget="${1:-${FUZZ_BUDGET_SECONDS:-60}}"
targets=(jsonl_decoder codec engine_model)
per=$(( budget / ${#targets[@]} ))
(( per >= 1 )) || per=1

export RUSTC_BOOTSTRAP=1
# A small quarantine keeps AddressSanitizer's freed-memory pool (counted in the RSS) from
# tripping the 256 MiB limit on the store target, which allocates a database per input.
export ASAN_OPTIONS="${ASAN_OPTIONS:-quarantine_size_mb=32}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

started=$(date +%s)
# -O: optimised; -a: with debug assertions (integer overflow checks and the like).
cargo fuzz build -O -a
echo "== built in $(( $(date +%s) - started ))s"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
status=0
for t in "${targets[@]}"; do
    mkdir -p "$work/$t"
    extra=()
    # Step lists need room: a few bytes make one or two steps.
    [[ "$t" == engine_model ]] && extra=(-max_len=512 -len_control=0)
    echo "== $t: ${per}s"
    # -rss_limit_mb / -malloc_limit_mb: a decoder that allocates what a length prefix claims
    # is a crash, not a slow run.
    if cargo fuzz run -O -a "$t" "$work/$t" "corpus/$t" -- \
        -max_total_time="$per" -rss_limit_mb=256 -malloc_limit_mb=256 -print_final_stats=1 "${extra[@]}" \
        >"$work/$t.log" 2>&1; then
        grep -E "^(stat::number_of_executed_units|stat::peak_rss_mb|Done [0-9]+ runs)" "$work/$t.log" || true
    else
        tail -n 80 "$work/$t.log"
        echo "== $t FAILED: the input is in fuzz/artifacts/$t/"
        status=1
    fi
done
echo "== total $(( $(date +%s) - started ))s"
exit "$status"
