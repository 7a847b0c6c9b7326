#!/usr/bin/env bash
# Fuzzing campaign: every cargo-fuzz target in fuzz/ (as listed by `cargo +nightly fuzz list`),
# one after another, each for FUZZ_SECONDS of libFuzzer time (-max_total_time) with
# -print_final_stats=1. For each target it records the exit status, the executions
# (stat::number_of_executed_units), the average exec/s (stat::average_exec_per_sec), the last
# `cov:` and `ft:` figures libFuzzer printed, and whether a crash artifact (crash-, leak-,
# timeout- or oom-) was written under fuzz/artifacts/<target>/. It prints a Markdown table and
# writes it to bench/results/fuzz-latest.md.
#
# Usage: bench/fuzz.sh                       (knobs below; e.g. FUZZ_SECONDS=60 bench/fuzz.sh)
#   FUZZ_SECONDS=600      seconds of fuzzing per target
#   FUZZ_TARGETS="json"   only these targets (space-separated; default: all listed)
#   FUZZ_ARGS="-dict=x"   extra libFuzzer arguments, passed to every target
#   FUZZ_LOG_DIR=dir      where the full libFuzzer logs go (default: a fresh temporary dir)
# Needs: the nightly toolchain (cargo +nightly); installs cargo-fuzz if it is missing.
# The corpus grows in fuzz/corpus/<target>/ between runs (git-ignored).
#
# Exits non-zero if any target crashed (a crash artifact, or a non-zero exit), or if the
# targets do not build.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
FUZZ_DIR="$REPO_ROOT/fuzz"
RESULTS_DIR="$SCRIPT_DIR/results"
REPORT="$RESULTS_DIR/fuzz-latest.md"
FUZZ_SECONDS="${FUZZ_SECONDS:-600}"
FUZZ_TARGETS="${FUZZ_TARGETS:-}"
FUZZ_ARGS="${FUZZ_ARGS:-}"
LOG_DIR="${FUZZ_LOG_DIR:-$(mktemp -d -t portcullis-fuzz.XXXXXX)}"

log() { printf '[fuzz] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 2; }

[[ "$FUZZ_SECONDS" =~ ^[0-9]+$ && "$FUZZ_SECONDS" -gt 0 ]] \
    || die "FUZZ_SECONDS must be a positive integer (got '$FUZZ_SECONDS')"
[[ -f "$FUZZ_DIR/Cargo.toml" ]] || die "$FUZZ_DIR/Cargo.toml not found"
mkdir -p "$RESULTS_DIR" "$LOG_DIR"

# ------------------------------------------------------------------ tools ----
if ! cargo +nightly --version >/dev/null 2>&1; then
    log "the nightly toolchain is missing; trying rustup toolchain install nightly"
    rustup toolchain install nightly --profile minimal >&2 \
        || die "no nightly toolchain (cargo-fuzz needs it for -Zsanitizer)"
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz (cargo install cargo-fuzz --locked)"
    cargo install cargo-fuzz --locked >&2 || die "could not install cargo-fuzz"
fi

cd "$FUZZ_DIR"
if [[ -n "$FUZZ_TARGETS" ]]; then
    read -r -a TARGETS <<<"$FUZZ_TARGETS"
else
    mapfile -t TARGETS < <(cargo +nightly fuzz list)
fi
((${#TARGETS[@]} > 0)) || die "no fuzz targets found"
log "targets: ${TARGETS[*]}; ${FUZZ_SECONDS}s each; logs in $LOG_DIR"

# Build every target first, so that a build failure stops the run before any fuzzing and
# build time never counts against a target's seconds.
for t in "${TARGETS[@]}"; do
    log "building $t (cargo +nightly fuzz build $t)"
    if ! cargo +nightly fuzz build "$t" >>"$LOG_DIR/build.log" 2>&1; then
        tail -n 30 "$LOG_DIR/build.log" >&2
        die "fuzz target $t does not build (full log: $LOG_DIR/build.log)"
    fi
done

# Crash-like artifacts of one target, one path a line (slow-unit-* files are not crashes).
artifacts() {
    local dir="$FUZZ_DIR/artifacts/$1"
    [[ -d "$dir" ]] || return 0
    find "$dir" -maxdepth 1 -type f \
        \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' \) | sort
}

# The value of a `stat::NAME: value` line, or "-".
final_stat() {
    local v
    v="$(grep -E "^stat::$1:" "$2" | tail -n 1 | awk '{print $2}')" || true
    printf '%s' "${v:--}"
}

ROWS=()
FAILED=0
for t in "${TARGETS[@]}"; do
    out="$LOG_DIR/$t.log"
    before="$(artifacts "$t")"
    log "running $t for ${FUZZ_SECONDS}s"
    set +e
    # shellcheck disable=SC2086  # FUZZ_ARGS is split into libFuzzer arguments on purpose
    cargo +nightly fuzz run "$t" -- -max_total_time="$FUZZ_SECONDS" -print_final_stats=1 \
        $FUZZ_ARGS >"$out" 2>&1
    status=$?
    set -e
    after="$(artifacts "$t")"
    new="$(comm -13 <(printf '%s\n' "$before") <(printf '%s\n' "$after") | sed '/^$/d')" || true
    # libFuzzer also names the file it wrote ("Test unit written to ...").
    written="$(grep -oE 'Test unit written to [^ ]+' "$out" | awk '{print $5}' \
        | grep -E '/(crash|leak|timeout|oom)-' || true)"
    crash="no"
    if [[ -n "$new" || -n "$written" ]]; then
        first="$(printf '%s\n%s\n' "$new" "$written" | sed '/^$/d' | head -n 1)"
        crash="yes: ${first#"$REPO_ROOT"/}"
    fi
    execs="$(final_stat number_of_executed_units "$out")"
    eps="$(final_stat average_exec_per_sec "$out")"
    covft="$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$out" | tail -n 1)" || true
    cov="$(awk '{print $2}' <<<"${covft:-}")"
    ft="$(awk '{print $4}' <<<"${covft:-}")"
    if [[ "$status" -ne 0 || "$crash" != "no" ]]; then
        FAILED=1
        log "$t FAILED (exit $status, crash: $crash); last lines of $out:"
        tail -n 20 "$out" >&2
    else
        log "$t ok: $execs executions, $eps exec/s, cov ${cov:--}, ft ${ft:--}"
    fi
    ROWS+=("| $t | $FUZZ_SECONDS | $status | $execs | $eps | ${cov:--} | ${ft:--} | $crash |")
done

commit="$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [[ -n "$(git -C "$REPO_ROOT" status --porcelain 2>/dev/null)" ]]; then
    commit="$commit (dirty)"
fi
{
    printf '# bench/fuzz.sh — %s\n\n' "$(date -u +%Y-%m-%d)"
    printf '| target | seconds | exit | executions | exec/s | cov | ft | crash artifact |\n'
    printf '|---|---:|---:|---:|---:|---:|---:|---|\n'
    printf '%s\n' "${ROWS[@]}"
    printf '\n'
    printf 'commit %s; %s; cargo-fuzz %s; %s CPUs; FUZZ_SECONDS=%s%s\n' \
        "$commit" "$(rustc +nightly --version)" "$(cargo fuzz --version | awk '{print $2}')" \
        "$(nproc)" "$FUZZ_SECONDS" "${FUZZ_ARGS:+; FUZZ_ARGS=$FUZZ_ARGS}"
    # shellcheck disable=SC2016  # the backticks are Markdown
    printf 'cov = code edges reached (libFuzzer `cov:`), ft = features (`ft:`), at the end of the run.\n'
} >"$REPORT"
cat "$REPORT"
log "report written to ${REPORT#"$REPO_ROOT"/}; full logs in $LOG_DIR"

if ((FAILED)); then
    log "at least one target crashed or failed"
    exit 1
fi
