#!/usr/bin/env python3
"""h2c client to h2c service only: sluice builds against nginx's grpc_pass and HAProxy's
`proto h2`, in interleaved rounds (compare.py's h2c-to-h2c table, without the rest).

    python3 benches/h2ab.py NAME=BINARY [NAME=BINARY ...] [--rounds N] [--seconds N]

The quick A/B of a change to sluice's HTTP/2 path (issue 23): the same backend (nginx's
h2c listener, `return 200`), the same load (h2load -t1 -c10 -m10), the proxies on one CPU
and the load on the other, as compare.py runs them. Needs nginx, haproxy and h2load
(benches/compare.sh installs them).
"""

import argparse
import importlib.util
import os
import statistics

spec = importlib.util.spec_from_file_location("compare", os.path.join(os.path.dirname(__file__), "compare.py"))
compare = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("builds", nargs="+", help="NAME=BINARY: a sluice build to run as target NAME")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    builds = dict(build.split("=", 1) for build in args.builds)
    bench = compare.Bench(argparse.Namespace(maxconn=4_000))
    try:
        backend = compare.free_port()
        conf = bench.nginx("backend", f'server {{ listen 127.0.0.1:{backend} http2; location / {{ return 200 "ok\\n"; }} }}')
        bench.start("backend", conf, backend)
        targets = []
        port = compare.free_port()
        block = f"""upstream backend_h2 {{ server 127.0.0.1:{backend}; keepalive 64; }}
    server {{ listen 127.0.0.1:{port} http2; location / {{ grpc_pass grpc://backend_h2; }} }}"""
        pid = bench.start("nginx-h2", bench.nginx("nginx-h2", block), port)
        targets.append(compare.Target("nginx-h2", port, pid, port, h2_only=True))
        port = compare.free_port()
        conf = bench.haproxy("haproxy-h2", f"bind 127.0.0.1:{port} proto h2", f"127.0.0.1:{backend} proto h2")
        targets.append(compare.Target("haproxy-h2", port, bench.start("haproxy-h2", conf, port), port, h2_only=True))
        for name, binary in builds.items():
            port = compare.free_port()
            path = bench.write(
                f"{name}.yaml",
                f"service: bench\nlisten: 127.0.0.1:{port}\nupstream: http://127.0.0.1:{backend}\n"
                f"upstream_protocol: http2\nadmin:\n  listen: 127.0.0.1:0\n  state_dir: {bench.dir}/{name}-state\n",
            )
            pid = bench.start(name, [binary, "run", "--config", path], port, dict(os.environ, SLUICE_LOG="warn"))
            targets.append(compare.Target(name, port, pid, port, h2_only=True))
        rates = {t.name: [] for t in targets}
        for r in range(args.rounds):
            for t in targets:
                rates[t.name].append(bench.h2load(t, args.seconds))
            print(f"round {r + 1}: " + "  ".join(f"{n} {v[-1]:,.0f}" for n, v in rates.items()), flush=True)
    finally:
        bench.stop()
    median = {name: statistics.median(r) for name, r in rates.items()}
    print(f"\nh2c req/s, median of {args.rounds} rounds:")
    for name, m in median.items():
        print(f"  {name:12} {m:9,.0f}  vs nginx-h2 {m / median['nginx-h2']:.2f}  vs haproxy-h2 {m / median['haproxy-h2']:.2f}")


if __name__ == "__main__":
    main()
