#!/usr/bin/env python3
"""Side-by-side load comparison: sluice against nginx and HAProxy on one machine.

Run through benches/compare.sh, which installs the tools and builds sluice. Every target
proxies to the same tiny backend (an nginx `return 200`). The load generator (wrk or h2load,
one thread) runs on CPU 0; the proxy under test and the backend share CPU 1, each proxy with
one worker. After a warm-up, the targets run in interleaved rounds (A B C ... repeated), and
the report gives, per target, the median and min-max of the rounds, and ratios to nginx and
to direct, all from this one run. Any socket error or unexpected status voids the run.

Then it measures latency in open loop (benches/openloop.rs: requests fall due on a fixed
schedule, latency counted from when each was due) at fixed fractions of nginx's measured
maximum, every target in turn again, and reports p50 and p99 and what each proxy adds to
direct's. A failed request, or an achieved rate under 95% of the one asked for, voids the run.

Per target it also reports the CPU time the proxy process spent per million requests
(user + system, and each part, from /proc/PID/stat around each HTTP/1.1 run), its resident
memory at start before any traffic, and what each idle keep-alive connection adds to it (N
connections, each having made one request, held open).

Last, every proxy runs again under callgrind, which counts the instructions it executes in
user space: the same for the same build and load whatever the neighbours do, so this is
the figure to compare builds by on a noisy machine. Counters are zeroed after a warm-up,
then N keep-alive requests are sent (h2load --h1, 10 connections) and the count divided by N.
"""

import argparse
import os
import resource
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field

CONNECTIONS = 50
# HTTP/2: h2load's connections and concurrent streams per connection
H2_CONNECTIONS, H2_STREAMS = 10, 10
IDLE_CONNECTIONS = 10_000
# requests counted under callgrind, after a warm-up of WARM_UP
COUNTED_REQUESTS, WARM_UP = 5_000, 200
TICKS = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, proc, name, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"compare: {name} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"compare: {name} did not listen on {port} within {timeout}s")


@dataclass
class Target:
    name: str
    port: int
    pid: int
    # where it speaks h2c (prior knowledge)
    h2_port: int
    # the status every response must have
    status: int = 200
    # speaks h2c only, to the backend's h2c listener: run in the h2c rounds alone
    h2_only: bool = False
    rates: list = field(default_factory=list)
    h2_rates: list = field(default_factory=list)
    # CPU seconds per million requests, per HTTP/1.1 run
    cpu: list = field(default_factory=list)
    rss_idle: int = 0
    rss_per_connection: float = 0.0
    # open loop: fraction of nginx's maximum -> [(p50 µs, p99 µs, achieved req/s)] per round
    latency: dict = field(default_factory=dict)
    # user-space instructions per request, under callgrind (not for direct)
    instructions: float = 0.0


def cpu_seconds(pid):
    """User and system CPU seconds the process has used."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS  # utime, stime


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+) kB", f.read()).group(1)) * 1024


class Bench:
    def __init__(self, args, callgrind=False):
        self.args = args
        # run every proxy (not the backend) under callgrind: see count_instructions
        self.callgrind = callgrind
        self.dir = tempfile.mkdtemp(prefix="sluice-compare-")
        self.procs = []
        two_cpus = len(os.sched_getaffinity(0)) >= 2
        if not two_cpus:
            print("compare: fewer than 2 CPUs: running unpinned, figures are not comparable", file=sys.stderr)
        self.load_cpu = ["taskset", "-c", "0"] if two_cpus else []
        self.server_cpu = ["taskset", "-c", "1"] if two_cpus else []

    def write(self, name, text):
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def start(self, name, argv, port, env=None):
        log = open(os.path.join(self.dir, f"{name}.log"), "w")
        timeout = 10.0
        if self.callgrind and name not in ("backend", "redis"):
            out = os.path.join(self.dir, f"{name}.callgrind")
            argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"] + argv
            timeout = 120.0
        proc = subprocess.Popen(self.server_cpu + argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.procs.append(proc)
        wait_listening(port, proc, name, timeout)
        return proc.pid

    def count_instructions(self, target, requests, h2=False):
        """User-space instructions per request of `target`, running under callgrind: HTTP/1.1
        requests on 10 connections, or with `h2` h2c on 10 connections of 10 streams each."""
        url = f"http://127.0.0.1:{target.port}/bench"
        protocol = ["-m", "10"] if h2 else ["--h1"]
        self.load(["h2load", *protocol, "-n", str(WARM_UP), "-c", "10", url])
        subprocess.run(["callgrind_control", "--zero", str(target.pid)], capture_output=True, check=True)
        out_text = self.load(["h2load", *protocol, "-n", str(requests), "-c", "10", url])
        # h2load counts a 4xx as failed: look at the status classes instead
        answered = re.search(rf"(\d+) {str(target.status)[0]}xx", out_text)
        if f"{requests} done" not in out_text or not answered or int(answered.group(1)) != requests:
            sys.exit(f"compare: {target.name}: run void under callgrind\n{out_text}")
        subprocess.run(["callgrind_control", "--dump", str(target.pid)], capture_output=True, check=True)
        dumps = sorted(f for f in os.listdir(self.dir) if f.startswith(f"{target.name}.callgrind."))
        if not dumps:
            sys.exit(f"compare: {target.name}: callgrind wrote no dump")
        with open(os.path.join(self.dir, dumps[-1])) as f:
            total = int(re.search(r"^summary: (\d+)", f.read(), re.M).group(1))
        return total / requests

    def stop(self):
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs = []
        if not os.environ.get("COMPARE_KEEP"):
            shutil.rmtree(self.dir, ignore_errors=True)

    def nginx(self, name, server_block):
        prefix = os.path.join(self.dir, name)
        os.makedirs(os.path.join(prefix, "logs"), exist_ok=True)
        conf = self.write(
            f"{name}.conf",
            f"""daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 20000; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 1000000;
    {server_block}
}}
""",
        )
        return ["nginx", "-p", prefix, "-c", conf]

    def haproxy(self, name, binds, server):
        """The command of an HAProxy with one thread, listening on `binds`, proxying to `server`."""
        conf = self.write(
            f"{name}.cfg",
            f"""global
    nbthread 1
    maxconn {self.args.maxconn}
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    http-reuse always
frontend in
    {binds}
    default_backend out
backend out
    server backend {server}
""",
        )
        return ["haproxy", "-db", "-f", conf]

    def setup(self):
        # nginx takes h2c (prior knowledge) only on a listener of its own
        backend, backend_h2 = free_port(), free_port()
        pid = self.start(
            "backend",
            self.nginx(
                "backend",
                f"""server {{ listen 127.0.0.1:{backend}; listen 127.0.0.1:{backend_h2} http2;
        location / {{ return 200 "ok\\n"; }} }}""",
            ),
            backend,
        )
        targets = [Target("direct", backend, pid, backend_h2)]

        port, h2_port = free_port(), free_port()
        location = 'location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }'
        pid = self.start(
            "nginx",
            self.nginx(
                "nginx",
                f"""upstream backend {{ server 127.0.0.1:{backend}; keepalive 64; }}
    server {{ listen 127.0.0.1:{port}; {location} }}
    server {{ listen 127.0.0.1:{h2_port} http2; {location} }}""",
            ),
            port,
        )
        targets.append(Target("nginx", port, pid, h2_port))

        port, h2_port = free_port(), free_port()
        binds = f"bind 127.0.0.1:{port}\n    bind 127.0.0.1:{h2_port} proto h2"
        pid = self.start("haproxy", self.haproxy("haproxy", binds, f"127.0.0.1:{backend}"), port)
        targets.append(Target("haproxy", port, pid, h2_port))

        # h2c clients to the backend's h2c listener, as gRPC services are proxied: nginx's
        # grpc_pass, HAProxy's `proto h2`, sluice's upstream_protocol http2
        h2_port = free_port()
        pid = self.start(
            "nginx-h2",
            self.nginx(
                "nginx-h2",
                f"""upstream backend_h2 {{ server 127.0.0.1:{backend_h2}; keepalive 64; }}
    server {{ listen 127.0.0.1:{h2_port} http2; location / {{ grpc_pass grpc://backend_h2; }} }}""",
            ),
            h2_port,
        )
        targets.append(Target("nginx-h2", h2_port, pid, h2_port, h2_only=True))
        h2_port = free_port()
        binds, server = f"bind 127.0.0.1:{h2_port} proto h2", f"127.0.0.1:{backend_h2} proto h2"
        pid = self.start("haproxy-h2", self.haproxy("haproxy-h2", binds, server), h2_port)
        targets.append(Target("haproxy-h2", h2_port, pid, h2_port, h2_only=True))

        # the store of sluice-global's quota: a real redis-server, on the proxy's CPU too
        redis = free_port()
        self.start("redis", ["redis-server", "--bind", "127.0.0.1", "--port", str(redis), "--save", "",
                             "--appendonly", "no", "--dir", self.dir], redis)
        # the same never-refusing quota, counted by this replica alone or by every replica
        # (a global one allows at most one request a microsecond: Redis's clock)
        quota = "quota: { rate: 1000000, per: 1s, burst: 1000000, key: client_ip%s }"
        self.global_admin = free_port()
        sluice_configs = {
            # no quotas, no SLA: the proxy alone (route metrics are always counted)
            "sluice": "",
            # a keyed rate quota and a concurrency quota that never refuse, SLA, metrics
            "sluice-full": """routes:
  - name: all
    match: { path: "/*" }
    quota: { rate: 1000000000, per: 1s, burst: 1000000, key: client_ip }
    concurrency: { max: 100000 }
    sla:
      latency: { threshold: 100ms, objective: 99% }
      availability: 99.9%
""",
            # every request refused: the 429 path
            "sluice-429": """routes:
  - name: all
    match: { path: "/*" }
    quota: { rate: 1, per: 1h, burst: 1 }
""",
            "sluice-local": f"""routes:
  - name: all
    match: {{ path: "/*" }}
    {quota % ""}
""",
            # on_error deny: a request Redis could not decide is a 503, which voids the run
            # (timeout 1s: under callgrind, and in the quick mode's debug build, a call is
            # far slower than the production default of 20ms)
            "sluice-global": f"""global: {{ redis: "redis://127.0.0.1:{redis}", timeout: 1s, on_error: deny }}
routes:
  - name: all
    match: {{ path: "/*" }}
    {quota % ", scope: global"}
""",
        }
        if self.args.baseline:
            sluice_configs["baseline"] = sluice_configs["sluice"]  # another build, bare config
        sluice_configs["sluice-h2"] = "upstream_protocol: http2\n"  # h2c to the backend's h2c listener
        for name, routes in sluice_configs.items():
            binary = self.args.baseline if name == "baseline" else self.args.sluice
            port = free_port()
            conf = self.write(
                f"{name}.yaml",
                f"""service: bench
listen: 127.0.0.1:{port}
upstream: http://127.0.0.1:{backend_h2 if name == "sluice-h2" else backend}
admin:
  listen: 127.0.0.1:{self.global_admin if name == "sluice-global" else 0}
  state_dir: {self.dir}/{name}-state
{routes}""",
            )
            env = dict(os.environ, SLUICE_LOG="warn")
            pid = self.start(name, [binary, "run", "--config", conf], port, env)
            status = 429 if name == "sluice-429" else 200
            targets.append(Target(name, port, pid, port, status=status, h2_only=name == "sluice-h2"))
        for t in targets:
            t.rss_idle = rss_bytes(t.pid)
        return targets

    def redis_calls(self):
        """sluice-global's Redis calls (ok, failed) and the requests it answered, so far."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.global_admin}/metrics", timeout=5) as response:
            text = response.read().decode()
        def total(pattern):
            return sum(float(v) for v in re.findall(pattern + r"\S* (\S+)$", text, re.M))
        ok = total(r'^sluice_global_quota_calls_total\{result="ok"\}')
        failed = total(r'^sluice_global_quota_calls_total\{result="(?:error|timeout)"\}')
        return ok, failed, total(r"^sluice_requests_total\{")

    def load(self, argv):
        """Runs a load generator on the load CPU; returns what it printed."""
        return subprocess.run(self.load_cpu + argv, capture_output=True, text=True, check=True).stdout

    def wrk(self, target, seconds):
        before = cpu_seconds(target.pid)
        out = self.load(["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", f"http://127.0.0.1:{target.port}/bench"])
        requests = int(re.search(r"(\d+) requests in", out).group(1))
        rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
        errors = re.search(r"Socket errors: (.*)", out)
        bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        non2xx = int(bad.group(1)) if bad else 0
        # the refusing quota lets its burst of 1 through once, in the warm-up
        expected_non2xx = requests if target.status != 200 else 0
        if errors or not 0 <= expected_non2xx - non2xx <= (target.status != 200) or requests == 0:
            sys.exit(f"compare: {target.name}: run void (errors: {errors and errors.group(1)}, "
                     f"non-2xx {non2xx} of {requests}, expected {expected_non2xx})\n{out}")
        after = cpu_seconds(target.pid)
        # seconds per million requests: user, system
        return rate, tuple((a - b) * 1e6 / requests for a, b in zip(after, before))

    def h2load(self, target, seconds):
        out = self.load(
            ["h2load", "-t1", f"-c{H2_CONNECTIONS}", f"-m{H2_STREAMS}", f"-D{seconds}",
             f"http://127.0.0.1:{target.h2_port}/bench"]
        )
        rate = float(re.search(r"finished in .*?, ([\d.]+) req/s", out).group(1))
        done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
        codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
        requests, failed, errored = int(done.group(1)), int(done.group(3)), int(done.group(4))
        refused = int(codes.group(3))
        # sluice-429 answers 429 (4xx) to all but the burst of 1, spent in the HTTP/1.1 warm-up
        good = refused == requests if target.status != 200 else (failed == errored == refused == 0)
        if requests == 0 or not good:
            sys.exit(f"compare: {target.name}: h2 run void\n{out}")
        return rate

    def open_loop(self, target, rate, seconds):
        out = self.load([self.args.openloop, f"http://127.0.0.1:{target.port}/bench", str(rate), str(seconds)])
        f = dict(zip(out.split()[::2], map(float, out.split()[1::2])))
        if f["failed"] or f["ok"] != f["due"] or f["achieved"] < 0.95 * rate:
            sys.exit(f"compare: {target.name}: open-loop run at {rate} req/s void: {out}")
        return f["p50_us"], f["p99_us"], f["achieved"]

    def idle_connections(self, target, count):
        """RSS added per idle keep-alive connection: `count` connections, one request each."""
        before = rss_bytes(target.pid)
        held = []
        request = b"GET /bench HTTP/1.1\r\nHost: bench\r\n\r\n"
        try:
            for _ in range(count):
                s = socket.create_connection(("127.0.0.1", target.port), timeout=10)
                s.sendall(request)
                if not s.recv(4096).startswith(b"HTTP/1.1"):
                    sys.exit(f"compare: {target.name}: no response on an idle-connection probe")
                held.append(s)
            time.sleep(0.5)
            return (rss_bytes(target.pid) - before) / count
        finally:
            for s in held:
                s.close()


def throughput(targets, rates, heading, column):
    """A throughput table: each target's median and min-max of `rates(target)`, with ratios."""
    median = {t.name: statistics.median(rates(t)) for t in targets}
    lines = [heading, "", f"| target | {column} median | min-max | vs nginx | vs direct |", "|---|---|---|---|---|"]
    for t in targets:
        m = median[t.name]
        lines.append(
            f"| {t.name} | {m:,.0f} | {min(rates(t)):,.0f}-{max(rates(t)):,.0f} "
            f"| {m / median['nginx']:.2f} | {m / median['direct']:.2f} |"
        )
    return lines


def report(targets, args):
    h2_only = [t for t in targets if t.h2_only]
    targets = [t for t in targets if not t.h2_only]
    by_name = {t.name: statistics.median(t.rates) for t in targets}
    lines = throughput(
        targets,
        lambda t: t.rates,
        f"Closed loop: wrk -t1 -c{CONNECTIONS}, {args.seconds}s per run, {args.rounds} interleaved rounds, "
        "load on CPU 0, proxy and backend on CPU 1.",
        "req/s",
    )
    lines += [""] + throughput(
        targets,
        lambda t: t.h2_rates,
        f"h2c: h2load -t1 -c{H2_CONNECTIONS} -m{H2_STREAMS}, {args.seconds}s per run, in the same rounds.",
        "h2c req/s",
    )
    direct = next(t for t in targets if t.name == "direct")
    h2_median = {t.name: statistics.median(t.h2_rates) for t in h2_only + [direct]}
    lines += [
        "",
        f"h2c client to h2c service (the backend's h2c listener; gRPC's shape): h2load -t1 -c{H2_CONNECTIONS}"
        f" -m{H2_STREAMS}, {args.seconds}s per run, in the same rounds. nginx-h2: grpc_pass; haproxy-h2:"
        " `proto h2`; sluice-h2: upstream_protocol http2.",
        "",
        "| target | h2c req/s median | min-max | vs nginx-h2 | vs haproxy-h2 | vs direct |",
        "|---|---|---|---|---|---|",
    ]
    for t in h2_only + [direct]:
        m = h2_median[t.name]
        lines.append(
            f"| {t.name} | {m:,.0f} | {min(t.h2_rates):,.0f}-{max(t.h2_rates):,.0f} | {m / h2_median['nginx-h2']:.2f} "
            f"| {m / h2_median['haproxy-h2']:.2f} | {m / h2_median['direct']:.2f} |"
        )
    for fraction in args.load:
        rate = round(by_name["nginx"] * fraction)
        lines += [
            "",
            f"Open loop at {fraction:.0%} of nginx's maximum: {rate:,} req/s, 50 connections, {args.seconds}s per run,"
            f" {args.latency_rounds} interleaved rounds; medians. Added: minus direct's.",
            "",
            "| target | achieved req/s | p50 | p99 | added p50 | added p99 |",
            "|---|---|---|---|---|---|",
        ]
        med = {
            t.name: [statistics.median(r[i] for r in t.latency[fraction]) for i in range(3)]
            for t in targets
            if fraction in t.latency
        }
        for name, (p50, p99, achieved) in med.items():
            lines.append(
                f"| {name} | {achieved:,.0f} | {p50:.0f} µs | {p99:.0f} µs "
                f"| {p50 - med['direct'][0]:.0f} µs | {p99 - med['direct'][1]:.0f} µs |"
            )
    lines += [
        "",
        f"Cost and memory of the process under test (direct: the backend itself). CPU: user + system"
        f" seconds per million HTTP/1.1 requests, median of the rounds, and its user and system parts"
        f" (medians of their own: user time is the process's code, system time mostly TCP on loopback)."
        f" RSS at start, before any traffic; per connection: with {args.idle} idle keep-alive"
        f" connections held open.",
        "",
        "| target | CPU s / M requests | user | system | RSS idle | RSS per idle connection |",
        "|---|---|---|---|---|---|",
    ]
    for t in targets:
        user, system = zip(*t.cpu)
        total = [u + s for u, s in t.cpu]
        lines.append(
            f"| {t.name} | {statistics.median(total):.1f} | {statistics.median(user):.1f} "
            f"| {statistics.median(system):.1f} | {t.rss_idle / 2**20:.1f} MiB "
            f"| {t.rss_per_connection / 2**10:.1f} KiB |"
        )
    nginx_instructions = next(t.instructions for t in targets if t.name == "nginx")
    lines += [
        "",
        f"User-space instructions per request, under callgrind: {args.counted:,} keep-alive requests"
        " (h2load --h1, 10 connections) after a warm-up. Repeatable whatever the neighbours do;"
        " the kernel's share is not counted.",
        "",
        "| target | instructions / request | vs nginx |",
        "|---|---|---|",
    ]
    for t in targets:
        if t.instructions:
            lines.append(f"| {t.name} | {t.instructions:,.0f} | {t.instructions / nginx_instructions:.2f} |")
    full, bare = by_name["sluice-full"], by_name["sluice"]
    # The two run back to back in each round, so a round's ratio is less moved by the
    # neighbours than the ratio of the medians, which may come from different rounds.
    target = {t.name: t for t in targets}
    paired = statistics.median(f / b for f, b in zip(target["sluice-full"].rates, target["sluice"].rates))
    more = target["sluice-full"].instructions / target["sluice"].instructions
    lines += [
        "",
        f"Quota + SLA cost (sluice-full vs sluice): {full / bare:.3f}x throughput by the medians "
        f"({100 * (1 - full / bare):.1f}% cost; negative: full was faster, within noise); "
        f"{paired:.3f}x by the median of the rounds' own ratios ({100 * (1 - paired):.1f}%); "
        f"{more:.3f}x the instructions ({100 * (more - 1):.1f}% more)",
        f"429 path vs proxied path (sluice-429 vs sluice-full): {by_name['sluice-429'] / full:.2f}x",
    ]
    local, shared = target["sluice-local"], target["sluice-global"]
    paired = statistics.median(g / l for g, l in zip(shared.rates, local.rates))
    ok, failed, requests = args.redis_calls
    lines.append(
        f"Global quota vs the same quota local (sluice-global vs sluice-local): "
        f"{by_name['sluice-global'] / by_name['sluice-local']:.3f}x throughput by the medians, "
        f"{paired:.3f}x by the median of the rounds' own ratios; "
        f"{shared.instructions / local.instructions:.3f}x the instructions; "
        f"Redis calls per 1,000 requests: {1000 * ok / requests:.2f} ({ok:,.0f} calls for {requests:,.0f} requests"
        f", {failed:,.0f} failed)"
    )
    if "baseline" in by_name:
        lines.append(f"This build vs the baseline build (sluice vs baseline): {bare / by_name['baseline']:.3f}x")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sluice", required=True, help="the sluice binary to measure")
    parser.add_argument("--baseline", help="another sluice binary, run bare as target `baseline`: an A/B of two builds")
    parser.add_argument("--openloop", required=True, help="the open-loop generator (benches/openloop.rs)")
    parser.add_argument("--latency-rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="every target briefly: proves the harness works")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    # every idle connection is a descriptor here and in the target
    # (HAProxy wants two per connection it may hold; root may raise the hard limit)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (65536, 65536))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    args.maxconn = hard // 2 - 100
    args.idle = min(IDLE_CONNECTIONS, args.maxconn - 1000)
    # open-loop rates, as fractions of nginx's closed-loop maximum
    args.load = [0.25, 0.5]
    args.counted = COUNTED_REQUESTS
    if args.quick:
        # the quick mode's generator is a debug build: ask only what it can surely send
        args.rounds, args.seconds, args.idle, args.latency_rounds = 1, 1, min(args.idle, 1000), 1
        args.load = [0.02, 0.04]
        args.counted = 300
    if args.idle < 100:
        sys.exit(f"compare: the descriptor limit ({hard}) is too low to hold idle connections")
    bench = Bench(args)
    try:
        targets = bench.setup()
        for t in targets:  # warm-up: pools filled, code paged in
            if t.h2_only:
                bench.h2load(t, 1 if args.quick else 3)
            else:
                bench.wrk(t, 1 if args.quick else 3)
        for _ in range(args.rounds):
            for t in targets:
                if not t.h2_only:
                    rate, cpu = bench.wrk(t, args.seconds)
                    t.rates.append(rate)
                    t.cpu.append(cpu)
                t.h2_rates.append(bench.h2load(t, args.seconds))
        nginx = statistics.median(next(t for t in targets if t.name == "nginx").rates)
        for _ in range(args.latency_rounds):
            for fraction in args.load:
                for t in targets:
                    if t.status == 200 and not t.h2_only:  # not the 429 path: a refusal is not an answer
                        t.latency.setdefault(fraction, []).append(bench.open_loop(t, round(nginx * fraction), args.seconds))
        # Redis calls over every request sluice-global answered, warm-up and all
        args.redis_calls = bench.redis_calls()
        for t in targets:
            if not t.h2_only:
                t.rss_per_connection = bench.idle_connections(t, args.idle)
    finally:
        bench.stop()
    # every proxy again, under callgrind, one at a time
    counted = Bench(args, callgrind=True)
    try:
        by_name = {t.name: t for t in targets}
        for t in counted.setup():
            if t.name != "direct" and not t.h2_only:  # counted over HTTP/1.1
                by_name[t.name].instructions = counted.count_instructions(t, args.counted)
    finally:
        counted.stop()
    print(report(targets, args))


if __name__ == "__main__":
    main()
