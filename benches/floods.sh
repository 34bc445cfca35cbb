#!/usr/bin/env bash
# sluice, nginx and HAProxy under the same floods, side by side: see BENCHMARKS.md.
#   benches/floods.sh [--rounds N] [--only NAME] [--proxies sluice,nginx,haproxy]
# Installs what it needs (Debian nginx-light, haproxy, slowhttptest) when missing, builds
# sluice in release, and runs benches/floods.py (about 5 minutes a round).
set -euo pipefail
cd "$(dirname "$0")/.."

.ci/need nginx nginx-light
.ci/need haproxy haproxy
.ci/need slowhttptest slowhttptest
for tool in taskset ss python3; do
    command -v "$tool" >/dev/null || { echo "floods: $tool is missing" >&2; exit 1; }
done
cargo build --release --locked --quiet
exec python3 benches/floods.py --sluice target/release/sluice "$@"
