#!/usr/bin/env bash
# Interleaved A/B of criterion bench binaries: runs each binary in turn, ROUNDS times, and
# prints each one's median and range per bench. On a noisy machine only binaries measured
# in the same interleaved run can be compared.
#
#   benches/ab.sh ROUNDS FILTER BINARY...
#
# Build each version with `cargo bench --bench decision --no-run` and copy the executable
# it names (target/release/deps/decision-<hash>) aside before building the next.
set -euo pipefail
[[ $# -ge 3 ]] || { echo "usage: $0 ROUNDS FILTER BINARY..." >&2; exit 2; }
rounds=$1 filter=$2
shift 2
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for _ in $(seq "$rounds"); do
  for bin in "$@"; do
    echo "== $bin" >>"$out"
    "$bin" --bench "$filter" --warm-up-time 1 --measurement-time 2 >>"$out" 2>&1
  done
done
python3 - "$out" <<'PY'
import re, statistics, sys
# criterion prints "NAME time: [low median high]", the name on a line of its own when long
rows, binary, name = {}, None, None
for line in open(sys.argv[1]):
    if line.startswith("== "):
        binary = line[3:].strip()
        continue
    if m := re.match(r"^(\S+/\S+)", line):
        name = m.group(1)
    if m := re.search(r"time:\s+\[\S+ \S+ ([0-9.]+) (\S+)", line):
        ns = float(m.group(1)) * {"ps": 1e-3, "ns": 1, "µs": 1e3, "ms": 1e6}[m.group(2)]
        rows.setdefault((name, binary), []).append(ns)
for (name, binary), ns in rows.items():
    print(f"{name:34} {binary:36} median {statistics.median(ns):7.1f} ns  range {min(ns):.0f}-{max(ns):.0f}")
PY
