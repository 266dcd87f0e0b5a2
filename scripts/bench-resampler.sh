#!/usr/bin/env bash
# The resampler's speed, in one run: natively beside rubato, and as WebAssembly in headless Chromium.
#
#   1. cargo bench -p soundline-shared --bench resampler (shared/benches/resampler.rs): first the quality table
#      that shows each rubato configuration is at least as good as ours (stopband, passband), then criterion:
#      48 and 44.1 kHz -> 16 kHz, 1 s blocks and 128-sample blocks, ours beside rubato (sinc, exact phases;
#      sinc, cubic; FFT). Throughput is in input samples. About 70 s once built.
#   2. web/benches/rtf.rs as a wasm32 test in headless Chromium, release build (as shipped): 60 s of 48 and
#      44.1 kHz audio in 128-sample blocks, timed with performance.now() after a warm-up. Prints the real-time
#      factor. About 10 s once built.
#   3. A short table of both. Criterion's own reports stay in <target dir>/criterion.
#
# Settings: RESAMPLER_BENCH_WASM=0 skips 2; RESAMPLER_BENCH_WASM_PROFILE=debug measures the debug build instead.
# Honours CARGO_TARGET_DIR. Needs chromedriver and wasm-bindgen-test-runner for 2 (scripts/setup.sh installs both).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$REPO_ROOT"

wasm="${RESAMPLER_BENCH_WASM:-1}"
wasm_profile="${RESAMPLER_BENCH_WASM_PROFILE:-release}"
[[ $wasm_profile == release || $wasm_profile == debug ]] || die "RESAMPLER_BENCH_WASM_PROFILE must be release or debug"
criterion_dir="$(target_dir)/criterion"
native_log="$(mktemp)"
wasm_log="$(mktemp)"
trap 'rm -f "$native_log" "$wasm_log"' EXIT
start=$SECONDS

say "native: ours beside rubato (cargo bench -p soundline-shared --bench resampler)"
cargo bench --locked -p soundline-shared --bench resampler 2>&1 | tee "$native_log"

if [[ $wasm == 1 ]]; then
  need chromedriver "run scripts/setup.sh (Debian's chromium-driver)"
  need wasm-bindgen-test-runner "run scripts/setup.sh (wasm-bindgen-cli)"
  say "wasm: real-time factor in headless Chromium ($wasm_profile build)"
  profile_flag=()
  [[ $wasm_profile == release ]] && profile_flag=(--release)
  CHROMEDRIVER="$(command -v chromedriver)" cargo test --locked -p soundline-web --target wasm32-unknown-unknown \
    "${profile_flag[@]}" --bench rtf -- --nocapture 2>&1 | tee "$wasm_log"
fi

say "summary ($((SECONDS - start)) s)"
python3 - "$criterion_dir" "$wasm_log" "$wasm_profile" <<'EOF'
import json, os, re, sys

crit, wasm_log, wasm_profile = sys.argv[1:4]
rates = [(48000, "48 kHz"), (44100, "44.1 kHz")]
blocks = [("1s-blocks", "1 s"), ("128-blocks", "128")]
rivals = ["rubato-sinc-nearest", "rubato-sinc-cubic", "rubato-fft"]


def msamples(group, bench):
    base = os.path.join(crit, group, bench, "new")
    with open(os.path.join(base, "estimates.json")) as f:
        est = json.load(f)
    with open(os.path.join(base, "benchmark.json")) as f:
        elements = json.load(f)["throughput"]["Elements"]
    ns = (est.get("slope") or est["mean"])["point_estimate"]
    return elements / ns * 1e3  # elements per ns -> M elements per s


print("Input Msamples/s (criterion's estimate per iteration); in brackets: ours / rubato (>1: ours is faster)")
print(f"{'rate':<9} {'blocks':<7} {'ours':>7}" + "".join(f" {r:>24}" for r in rivals))
for rate, rate_name in rates:
    for group_suffix, block_name in blocks:
        group = f"{rate}Hz-{group_suffix}"
        try:
            ours = msamples(group, "ours")
            cells = []
            for r in rivals:
                theirs = msamples(group, r)
                cells.append(f"{theirs:8.1f} ({ours / theirs:5.2f}x)")
        except (OSError, KeyError) as e:
            print(f"{rate_name:<9} {block_name:<7} missing criterion results: {e}")
            continue
        print(f"{rate_name:<9} {block_name:<7} {ours:7.1f}" + "".join(f" {c:>24}" for c in cells))

if os.path.getsize(wasm_log) > 0:
    print(f"\nWebAssembly in headless Chromium ({wasm_profile} build, 128-sample blocks, 60 s of audio per run):")
    found = False
    for line in open(wasm_log):
        m = re.search(r"wasm resampler (\d+)->16000: .* = (\d+) x real time \(median [\d.]+ ms = (\d+) x", line)
        if m:
            found = True
            print(f"  {int(m.group(1)) / 1000:g} kHz -> 16 kHz: {m.group(2)} x real time (best of 5), median {m.group(3)} x")
    if not found:
        print("  no real-time factor found in the test output (see above)")
EOF
