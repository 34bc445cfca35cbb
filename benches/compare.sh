#!/usr/bin/env bash
# sluice against nginx and HAProxy on this machine: see BENCHMARKS.md.
#   benches/compare.sh            the full comparison (5 rounds of 10 s per target)
#   benches/compare.sh --quick    every target briefly: proves the harness works
# Options after these go to benches/compare.py (--rounds N, --seconds N, --sluice PATH,
# --baseline PATH: another sluice build, run bare next to this one; --openloop PATH).
# Installs what it needs (Debian nginx-light, haproxy, wrk, nghttp2-client, valgrind,
# redis-server) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

.ci/need nginx nginx-light
.ci/need haproxy haproxy
.ci/need wrk wrk
.ci/need h2load nghttp2-client
.ci/need callgrind_control valgrind
.ci/need redis-server redis-server  # the store of sluice-global
for tool in taskset python3; do
    command -v "$tool" >/dev/null || { echo "compare: $tool is missing" >&2; exit 1; }
done

if [[ " $* " != *" --openloop "* ]]; then
    # release for real figures; the quick mode only proves the harness, and a debug build
    # reuses what the test suite has already compiled
    profile=(--release)
    [[ " $* " == *" --quick "* ]] && profile=()
    openloop=$(cargo build --locked --quiet "${profile[@]}" --bench openloop --message-format=json |
        python3 -c 'import json, sys
messages = [json.loads(line) for line in sys.stdin]  # all of them: cargo must not write to a closed pipe
print(next(m["executable"] for m in messages
           if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "openloop"))')
    set -- --openloop "$openloop" "$@"
fi
if [[ " $* " != *" --sluice "* ]]; then
    cargo build --release --locked --quiet
    set -- --sluice target/release/sluice "$@"
fi
exec python3 benches/compare.py "$@"
