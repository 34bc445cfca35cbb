#!/usr/bin/env bash
# Binary upgrades and reloads under load, sluice against nginx and HAProxy: see
# BENCHMARKS.md, "Issue 21".
#   benches/upgrades.sh [--rounds N] [--upgrades N] [--proxies sluice,nginx-usr2,nginx-reload,haproxy-sf]
# Installs what it needs (Debian nginx-light, haproxy, wrk) when missing, builds sluice in
# release, and runs benches/upgrades.py (about 2 minutes a round).
set -euo pipefail
cd "$(dirname "$0")/.."

.ci/need nginx nginx-light
.ci/need haproxy haproxy
.ci/need wrk wrk
for tool in taskset python3; do
    command -v "$tool" >/dev/null || { echo "upgrades: $tool is missing" >&2; exit 1; }
done
cargo build --release --locked --quiet
exec python3 benches/upgrades.py --sluice target/release/sluice "$@"
