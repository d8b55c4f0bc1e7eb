#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo fuzz, libFuzzer) of every parser that takes outside
# input: fuzz/fuzz_targets/*.rs, one target each (SIWE, RFB from the browser and from
# the desktop, WebRTC input JSON, the launcher's wire JSON, the configuration file).
#
#   fuzz.sh ci                 build every target and run each for 20 s; a crash, hang
#                              or oversized allocation fails, naming the target and
#                              its reproducer
#   fuzz.sh long [RUNS [TARGET...]]
#                              run each target (or those named) for RUNS executions
#                              (default 10000000) with the same limits, and print one
#                              line of figures per target: executions, seconds,
#                              exec/s, peak RSS, corpus size
#   fuzz.sh list               print the targets
#   fuzz.sh TARGET [ARGS...]   build and run one target with libFuzzer's ARGS (a file
#                              as ARGS replays it: fuzz.sh siwe fuzz/artifacts/siwe/crash-…)
#
# Seeds are committed in fuzz/seeds/TARGET/ (fuzz/seeds/make_seeds.py writes them) and
# only read; what the fuzzer finds grows fuzz/corpus/TARGET/, reproducers land in
# fuzz/artifacts/TARGET/ and each run's output in fuzz/logs/TARGET.log (all ignored by
# git). A reproducer worth keeping is copied into fuzz/seeds/TARGET/ with a test beside
# the parser it broke.
#
# Toolchain: cargo fuzz needs nightly-only flags (-Zsanitizer, sanitizer coverage) and
# no nightly can be fetched here, so the stable compiler runs with RUSTC_BOOTSTRAP=1.
# Targets build as cargo fuzz builds them by default (optimised, with debug assertions
# and overflow checks, so an arithmetic overflow is a crash), with 16 codegen units
# instead of 1: a shorter build for slightly slower runs.
# AddressSanitizer stays on (the stable toolchain ships its runtime): the code has no
# unsafe, but ASan is what lets libFuzzer's -malloc_limit_mb see each allocation, so
# an allocation sized by hostile input fails the run instead of passing unnoticed.
# FUZZ_SANITIZER=none builds without it (about twice as fast; then only the RSS
# limit catches memory).
set -euo pipefail
LOG_TAG=fuzz
# shellcheck source=scripts/lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

FUZZ=$REPO/fuzz
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
SANITIZER=${FUZZ_SANITIZER:-address}
BIN_DIR=$FUZZ/target/$TRIPLE/release
CI_SECONDS=${FUZZ_CI_SECONDS:-20}
DEFAULT_RUNS=10000000
# Each input: at most 10 s, 2 GiB resident, and no single allocation of 512 MiB or
# more (the largest legitimate one is a 256 MiB framebuffer, media's MAX_PIXELS).
LIMITS=(-rss_limit_mb=2048 -malloc_limit_mb=512 -timeout=10)

usage() {
    sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

targets() {
    local file
    for file in "$FUZZ"/fuzz_targets/*.rs; do
        basename -- "$file" .rs
    done
}

ensure_cargo_fuzz() {
    if ! cargo fuzz --version >/dev/null 2>&1; then
        log "installing cargo-fuzz (cargo install cargo-fuzz --locked)"
        cargo install cargo-fuzz --locked
    fi
}

# Builds one target, or every target when none is named.
build() {
    ensure_cargo_fuzz
    log "building ${1:-every target} (sanitizer: $SANITIZER; the first build takes long)"
    (cd -- "$REPO" && RUSTC_BOOTSTRAP=1 cargo fuzz build --fuzz-dir fuzz --codegen-units 16 \
        --sanitizer "$SANITIZER" ${1:+"$1"})
}

# Runs TARGET's binary over its corpus and seeds with libFuzzer ARGS, output to its log.
run_target() {
    local target=$1
    shift
    mkdir -p -- "$FUZZ/corpus/$target" "$FUZZ/artifacts/$target" "$FUZZ/logs"
    # The first directory takes what the fuzzer finds; the seeds are only read.
    "$BIN_DIR/$target" "$FUZZ/corpus/$target" "$FUZZ/seeds/$target" \
        -artifact_prefix="$FUZZ/artifacts/$target/" -print_final_stats=1 "$@" \
        >"$FUZZ/logs/$target.log" 2>&1
}

# Fails loudly for TARGET whose run just ended with status STATUS.
report_failure() {
    local target=$1 status=$2 log=$FUZZ/logs/$1.log reproducer
    show_log_tail "$log" 40
    reproducer=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
    if [[ -n $reproducer ]]; then
        die "fuzz target $target failed (exit $status); reproducer: $reproducer (replay: scripts/fuzz.sh $target $reproducer)"
    fi
    die "fuzz target $target failed (exit $status) without a reproducer; see $log"
}

# One line of figures for TARGET from its log and SECS, the run's wall-clock seconds:
# executions, seconds, exec/s, peak RSS, corpus size.
figures() {
    local target=$1 secs=$2 log=$FUZZ/logs/$1.log execs rss files bytes
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -n 1)
    execs=${execs:-0}
    ((secs > 0)) || secs=1
    files=$(find "$FUZZ/corpus/$target" -type f | wc -l)
    bytes=$(du -sb -- "$FUZZ/corpus/$target" | cut -f1)
    printf '%-13s %10s execs %6s s %7s exec/s %5s MB peak RSS  corpus %s files, %s bytes\n' \
        "$target" "$execs" "$secs" "$((execs / secs))" "${rss:-?}" "$files" "$bytes"
}

ci() {
    local target started status run_started
    started=$SECONDS
    build
    log "built in $((SECONDS - started)) s"
    for target in $(targets); do
        log "$target: ${CI_SECONDS} s"
        status=0 run_started=$SECONDS
        run_target "$target" -max_total_time="$CI_SECONDS" "${LIMITS[@]}" || status=$?
        ((status == 0)) || report_failure "$target" "$status"
        figures "$target" $((SECONDS - run_started))
    done
    log "every target ran clean; $((SECONDS - started)) s in all"
}

long() {
    local runs=${1:-$DEFAULT_RUNS} target status run_started
    [[ $runs =~ ^[0-9]+$ ]] || die "RUNS must be a number of executions, not '$runs'"
    shift || true
    local chosen=("$@")
    ((${#chosen[@]} > 0)) || mapfile -t chosen < <(targets)
    build
    for target in "${chosen[@]}"; do
        [[ -f $FUZZ/fuzz_targets/$target.rs ]] || die "no fuzz target '$target'"
        log "$target: $runs executions (log: fuzz/logs/$target.log)"
        status=0 run_started=$SECONDS
        run_target "$target" -runs="$runs" "${LIMITS[@]}" || status=$?
        ((status == 0)) || report_failure "$target" "$status"
        figures "$target" $((SECONDS - run_started))
    done
}

one() {
    local target=$1 status=0 run_started
    shift
    [[ -f $FUZZ/fuzz_targets/$target.rs ]] || die "no fuzz target '$target' (targets: $(targets | tr '\n' ' '))"
    build "$target"
    if [[ $# -gt 0 && -f $1 ]]; then
        # Replaying files: libFuzzer runs each once, without the corpus.
        "$BIN_DIR/$target" "${LIMITS[@]}" "$@"
        return
    fi
    log "$target (log: fuzz/logs/$target.log)"
    run_started=$SECONDS
    run_target "$target" "${LIMITS[@]}" "$@" || status=$?
    ((status == 0)) || report_failure "$target" "$status"
    figures "$target" $((SECONDS - run_started))
}

case ${1:-} in
ci) ci ;;
long)
    shift
    long "$@"
    ;;
list) targets ;;
"" | -h | --help | help) usage ;;
*) one "$@" ;;
esac
