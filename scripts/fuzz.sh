#!/usr/bin/env bash
# Fuzzes the untrusted-input parsers of soundline-shared with cargo-fuzz (libFuzzer), one target after the other:
#   frame     the binary audio frame decoder (relay, every WebSocket binary message)
#   control   hello / subscribe and the relay's text messages
#   envelope  the AICP_SOUND envelope parser and the feed's record classifier (whatever Kafka holds)
#
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#   SECONDS_PER_TARGET defaults to 600 (10 minutes each); `scripts/fuzz.sh 10` is a smoke run.
#   TARGET... defaults to all three.
#
# Needs the nightly toolchain and cargo-fuzz; installs them when missing. Builds go to CARGO_TARGET_DIR, by default
# "$SOUNDLINE_CACHE/fuzz-target" (outside the repo). Each target fuzzes a scratch copy of its committed seeds
# (fuzz/corpus/TARGET), so the committed folder stays seeds only; a crashing input lands in fuzz/artifacts/TARGET/
# (git-ignored) and the full libFuzzer log in "$SOUNDLINE_CACHE/fuzz-logs/TARGET.log".
# Exits non-zero if any target crashed (panic, failed check, timeout, out of memory).
set -euo pipefail
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

secs="${1:-600}"
[[ "$secs" =~ ^[1-9][0-9]*$ ]] || die "usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...] (seconds: a positive integer, got '$secs')"
shift $(($# > 0 ? 1 : 0))
targets=("$@")
((${#targets[@]})) || targets=(frame control envelope)
for t in "${targets[@]}"; do
  [[ -f "$REPO_ROOT/fuzz/fuzz_targets/$t.rs" ]] || die "no fuzz target '$t' (there are: frame control envelope)"
done

need rustup "the Rust toolchain installer, https://rustup.rs"
need cargo "Rust's build tool, installed by rustup"
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  say "installing the nightly toolchain (cargo-fuzz needs it for the sanitizer and coverage flags)"
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  say "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$SOUNDLINE_CACHE/fuzz-target}"
logs="$SOUNDLINE_CACHE/fuzz-logs"
mkdir -p "$logs"
scratch="$(mktemp -d "${TMPDIR:-/tmp}/soundline-fuzz.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT
cd "$REPO_ROOT"

say "building the fuzz targets (nightly, release + debug assertions, AddressSanitizer) into $CARGO_TARGET_DIR"
build_start=$SECONDS
cargo +nightly fuzz build
say "built in $((SECONDS - build_start)) s"

summary=()
failed=()
for t in "${targets[@]}"; do
  corpus="$scratch/$t"
  mkdir -p "$corpus"
  cp fuzz/corpus/"$t"/* "$corpus"/
  log="$logs/$t.log"
  say "fuzzing $t for $secs s (log: $log)"
  start=$SECONDS
  status=0
  # New inputs go to the first corpus folder (the scratch copy); the seeds folder is only read.
  cargo +nightly fuzz run "$t" "$corpus" "fuzz/corpus/$t" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 >"$log" 2>&1 || status=$?
  took=$((SECONDS - start))

  runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
  # libFuzzer's status lines: "#1234567	DONE   cov: 812 ft: 3120 corp: 260/22Kb lim: 4096 exec/s: 20576 rss: 61Mb"
  last="$(grep -E '^#[0-9]+[[:space:]]' "$log" | tail -n 1 || true)"
  [[ -n "$runs" ]] || runs="$(sed -E -n 's/^#([0-9]+)[[:space:]].*/\1/p' <<<"$last")"
  execs="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)"
  cov="$(grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[0-9]+[A-Za-z]*' <<<"$last" || true)"
  crashes=0
  if ((status != 0)); then
    failed+=("$t")
    say "$t FAILED (exit $status); the end of its log:"
    tail -n 40 "$log" >&2
    if ! grep -q '^INFO: Seed:' "$log"; then # libFuzzer never started: the build or the launch failed
      summary+=("$t: did not run (build or launch failed, exit $status; see $log)")
      continue
    fi
    crashes="$(grep -c 'Test unit written to' "$log" || true)"
    ((crashes > 0)) || crashes=1
  fi
  say "$t final: ${last:-no status line (see $log)}"
  summary+=("$t: ${runs:-?} runs in $took s, $crashes crashes (${execs:-?} exec/s; ${cov:-cov: ?})")
done

say "summary"
printf '%s\n' "${summary[@]}"
((${#failed[@]} == 0)) || die "fuzzing failed for: ${failed[*]} (crashing inputs in fuzz/artifacts/, logs in $logs)"
