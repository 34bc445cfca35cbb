#!/usr/bin/env python3
"""Instructions per proxied request of sluice builds and configs, under callgrind.

The repeatable figure of benches/compare.py (user-space instructions, the same from run to
run for the same binary and input, whatever else the machine does), without the load
comparison around it: for an A/B of a change to the request path in a few minutes.

    python3 benches/instructions.py --sluice target/release/sluice [--baseline OLD] [--rounds N]

Each build runs each config behind the same nginx backend, as compare.py counts it: 200
keep-alive requests of warm-up, then 20,000 counted (h2load --h1, 10 connections). Needs
nginx, h2load and valgrind (benches/compare.sh installs them), and redis-server for the
`global` config. The `h2-front` and `h2` configs are loaded by h2c clients (h2load -c10 -m10).
"""

import argparse
import importlib.util
import os
import statistics
import subprocess

spec = importlib.util.spec_from_file_location("compare", os.path.join(os.path.dirname(__file__), "compare.py"))
compare = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare)

COUNTED = 20_000

QUOTA = "quota: {{ rate: 1000000000, per: 1s, burst: 1000000, key: client_ip{advertise} }}"
FULL = """routes:
  - name: all
    match: {{ path: "/*" }}
    {quota}
    concurrency: {{ max: 100000 }}
    sla:
      latency: {{ threshold: 100ms, objective: 99% }}
      availability: 99.9%
"""
CONFIGS = {
    # no quotas, no SLA: the proxy alone (as compare.py's `sluice`)
    "bare": "",
    # a keyed rate quota and a concurrency quota that never refuse, SLA (compare.py's `sluice-full`)
    "full": FULL.format(quota=QUOTA.format(advertise="")),
    # the same, its quota advertising on every response (`advertise: always`)
    "full-advertise": FULL.format(quota=QUOTA.format(advertise=", advertise: always")),
    # the same with retries that never fire (the service never fails): issue 22's healthy path;
    # a build without retries refuses it, so its row is read against the baseline's `full`
    "full-retries": FULL.format(quota=QUOTA.format(advertise=""))
    + '    retries: { attempts: 2, on: [connect_error, reset, "503"], per_try_timeout: 5s, budget: 20% }\n',
    # the same with a circuit breaker that never trips: issue 22's caps, counted per request
    "full-breaker": "circuit_breaker: { max_requests: 1000000, max_connections: 100000 }\n"
    + FULL.format(quota=QUOTA.format(advertise="")),
    # one never-refusing keyed rate quota (compare.py's `sluice-local`), and the same shared
    # by every replica on a real redis-server (`sluice-global`; REDIS is its address; a
    # timeout of 1s, as under callgrind a call is far slower than in production)
    "local": 'routes:\n  - name: all\n    match: { path: "/*" }\n    quota: { rate: 1000000, per: 1s, burst: 1000000, key: client_ip }\n',
    "global": 'global: { redis: "redis://REDIS", timeout: 1s, on_error: deny }\nroutes:\n  - name: all\n    match: { path: "/*" }\n'
    '    quota: { rate: 1000000, per: 1s, burst: 1000000, key: client_ip, scope: global }\n',
    # h2c clients: to the same HTTP/1.1 service (the HTTP/2 front alone), and to the backend's
    # h2c listener (`upstream_protocol: http2`, gRPC's path: issue 23)
    "h2-front": "",
    "h2": "upstream_protocol: http2\n",
}
H2 = ("h2-front", "h2")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sluice", required=True, help="the sluice binary to count")
    parser.add_argument("--baseline", help="another sluice binary, counted the same way")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--config", action="append", choices=CONFIGS, help="only these configs (default: all)")
    args = parser.parse_args()
    builds = {"sluice": args.sluice}
    if args.baseline:
        builds["baseline"] = args.baseline
    configs = {name: CONFIGS[name] for name in (args.config or CONFIGS)}

    bench = compare.Bench(argparse.Namespace(maxconn=20_000), callgrind=True)
    counts = {}
    try:
        backend, backend_h2 = compare.free_port(), compare.free_port()
        listen = f"listen 127.0.0.1:{backend}; listen 127.0.0.1:{backend_h2} http2;"
        conf = bench.nginx("backend", f'server {{ {listen} location / {{ return 200 "ok\\n"; }} }}')
        bench.start("backend", conf, backend)
        if "global" in configs:
            redis = compare.free_port()
            argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(redis), "--save", "", "--appendonly", "no"]
            bench.start("redis", argv + ["--dir", bench.dir], redis)
            configs["global"] = configs["global"].replace("REDIS", f"127.0.0.1:{redis}")
        for r in range(args.rounds):
            for config, routes in configs.items():
                for build, binary in builds.items():
                    name = f"{build}-{config}-{r}"
                    port = compare.free_port()
                    path = bench.write(
                        f"{name}.yaml",
                        f"service: bench\nlisten: 127.0.0.1:{port}\n"
                        f"upstream: http://127.0.0.1:{backend_h2 if config == 'h2' else backend}\n"
                        f"admin:\n  listen: 127.0.0.1:0\n  state_dir: {bench.dir}/{name}-state\n{routes}",
                    )
                    # an older build may not know a config's fields: it is left out of that row
                    if subprocess.run([binary, "validate", "--config", path], capture_output=True).returncode:
                        print(f"round {r + 1}: {build:8} {config:15} (this build refuses the config)", flush=True)
                        continue
                    env = dict(os.environ, SLUICE_LOG="warn")
                    pid = bench.start(name, [binary, "run", "--config", path], port, env)
                    n = bench.count_instructions(compare.Target(name, port, pid, port), COUNTED, h2=config in H2)
                    counts.setdefault((config, build), []).append(n)
                    print(f"round {r + 1}: {build:8} {config:15} {n:9,.0f}", flush=True)
    finally:
        bench.stop()
    print(f"\ninstructions per request (median of {args.rounds}):")
    for config in configs:
        row = {b: statistics.median(counts[(config, b)]) for b in builds if (config, b) in counts}
        line = f"  {config:15} " + "  ".join(f"{b} {v:9,.0f}" for b, v in row.items())
        if "baseline" in row and "sluice" in row:
            line += f"  ratio {row['sluice'] / row['baseline']:.3f}"
        print(line)


if __name__ == "__main__":
    main()
