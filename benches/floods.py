"""Floods side by side: sluice, nginx and HAProxy under the same hostile clients, each
while a well-behaved client measures its latency (BENCHMARKS.md, "Issue 20").

    python3 benches/floods.py --sluice target/release/sluice [--rounds N]

Every proxy gets one CPU (CPU 1) and one worker, the same 2 s timeouts for a head, a body
and a write, and proxies to the same nginx backend; the floods, the good client and the
backend run on CPU 0. For each flood and round, each proxy is started afresh, the good
client (one keep-alive connection, a GET every 10 ms) measures for 2 s, the flood starts,
and 2 s later the good client measures again for 6 s while the flood's established
connections to the proxy are counted every 250 ms. Reported per flood and proxy, as the
median over the rounds: the good client's p99 before and during, the proxy's peak RSS, the
most flood connections open at once (HTTP/1.1 floods: 100 new a second for 10 s, so about
300 when each is cut after 2 s) and, for the HTTP/2 floods, what the flooding connection
met (tests/h2/flood.py: goaway, closed or open).
Run by benches/floods.sh, which installs the tools and builds sluice."""

import argparse
import http.client
import importlib.util
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("compare", os.path.join(HERE, "compare.py"))
compare = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare)
free_port, wait_listening = compare.free_port, compare.wait_listening
FLOOD_PY = os.path.join(HERE, "..", "tests", "h2", "flood.py")
SLOWHTTPTEST = ["-c", "1000", "-r", "100", "-l", "10"]
# name, kind, arguments, path
FLOODS = [
    ("slowloris", "h1", ["-H", "-i", "1", "-x", "10"], "/"),
    ("slow body", "h1", ["-B", "-i", "3", "-s", "100000", "-x", "10"], "/upload"),
    ("slow read", "h1", ["-X", "-w", "1", "-y", "4", "-n", "3", "-z", "1", "-k", "1"], "/big"),
    ("h2 rapid reset", "h2", ["rapid_reset", "3"], None),
    ("h2 CONTINUATION", "h2", ["continuation", "3"], None),
    ("h2 empty DATA", "h2", ["empty_data", "3"], None),
    ("h2 PING", "h2", ["ping", "3"], None),
    ("h2 SETTINGS", "h2", ["settings", "3"], None),
    ("h2 slow read x4", "h2", ["slow_read", "5"], None),
]
PROXIES = ["sluice", "nginx", "haproxy"]
LOAD_CPU, PROXY_CPU = ["taskset", "-c", "0"], ["taskset", "-c", "1"]


def peak_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def established(port):
    out = subprocess.run(["ss", "-Htn", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True).stdout
    return sum(1 for line in out.splitlines() if line.strip())


def p99(latencies):
    latencies = sorted(latencies)
    return latencies[min(len(latencies) * 99 // 100, len(latencies) - 1)]


def good_client(port, seconds):
    """Latencies of a GET every 10 ms on one keep-alive connection, in ms."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    latencies = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        sent = time.monotonic()
        try:
            conn.request("GET", "/good")
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                sys.exit(f"floods: the good client got {response.status}")
        except OSError:  # no answer within 10 s, or the connection was cut: counted, again
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        latencies.append((time.monotonic() - sent) * 1000)
        time.sleep(0.01)
    conn.close()
    return latencies


class Bench:
    def __init__(self, sluice):
        self.sluice = sluice
        self.dir = tempfile.mkdtemp(prefix="sluice-floods-")
        with open(os.path.join(self.dir, "big.bin"), "wb") as f:
            f.truncate(64 << 20)
        self.backend = free_port()
        self.backend_proc = self.spawn(LOAD_CPU, self.nginx("backend", f"""
    server {{
        listen 127.0.0.1:{self.backend};
        location /big {{ alias {self.dir}/big.bin; }}
        # reads the whole body first, as a service that takes an upload does
        location /upload {{ proxy_pass http://127.0.0.1:{self.backend}/good; }}
        location / {{ return 200 "ok\\n"; }}
    }}"""), "backend")
        wait_listening(self.backend, self.backend_proc, "backend")

    def spawn(self, cpu, argv, name, env=None):
        log = open(os.path.join(self.dir, f"{name}.log"), "a")
        return subprocess.Popen(cpu + argv, stdout=log, stderr=subprocess.STDOUT, env=env)

    def write(self, name, text):
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def nginx(self, name, servers):
        prefix = os.path.join(self.dir, name)
        os.makedirs(os.path.join(prefix, "logs"), exist_ok=True)
        conf = self.write(f"{name}.conf", f"""daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 20000;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log crit;
events {{ worker_connections 10000; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    {servers}
}}
""")
        return ["nginx", "-p", prefix, "-c", conf]

    def start(self, proxy):
        """Starts `proxy`: its process, its HTTP/1.1 port and its h2c port."""
        port = free_port()
        if proxy == "sluice":
            conf = self.write("sluice.yaml", f"""service: floods
listen: 127.0.0.1:{port}
upstream: http://127.0.0.1:{self.backend}
admin: {{ listen: 127.0.0.1:0, state_dir: {self.dir}/sluice-state }}
limits: {{ header_read_timeout: 2s, body_read_timeout: 2s, write_timeout: 2s, idle_timeout: 5s }}
""")
            proc = self.spawn(PROXY_CPU, [self.sluice, "run", "--config", conf], proxy,
                              dict(os.environ, SLUICE_LOG="error"))
            h2_port = port
        elif proxy == "nginx":
            h2_port = free_port()
            location = ("location / { proxy_pass http://127.0.0.1:%d; proxy_http_version 1.1; "
                        "proxy_set_header Connection \"\"; }" % self.backend)
            proc = self.spawn(PROXY_CPU, self.nginx("nginx", f"""
    client_header_timeout 2s;
    client_body_timeout 2s;
    send_timeout 2s;
    keepalive_timeout 5s;
    server {{ listen 127.0.0.1:{port}; {location} }}
    server {{ listen 127.0.0.1:{h2_port} http2; {location} }}"""), proxy)
        else:
            h2_port = free_port()
            conf = self.write("haproxy.cfg", f"""global
    nbthread 1
    maxconn 9000
defaults
    mode http
    timeout connect 5s
    timeout http-request 2s
    timeout client 2s
    timeout http-keep-alive 5s
    timeout server 30s
frontend in
    bind 127.0.0.1:{port}
    bind 127.0.0.1:{h2_port} proto h2
    default_backend out
backend out
    server backend 127.0.0.1:{self.backend}
""")
            proc = self.spawn(PROXY_CPU, ["haproxy", "-db", "-f", conf], proxy)
        wait_listening(port, proc, proxy)
        wait_listening(h2_port, proc, proxy)
        return proc, port, h2_port

    def run(self, proxy, flood):
        name, kind, args, path = flood
        proc, port, h2_port = self.start(proxy)
        try:
            before = p99(good_client(port, 2))
            if kind == "h1":
                attack = [subprocess.Popen(LOAD_CPU + ["slowhttptest", args[0]] + SLOWHTTPTEST + args[1:]
                                           + ["-u", f"http://127.0.0.1:{port}{path}"],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
            else:
                copies = 4 if args[0] == "slow_read" else 1
                attack = [subprocess.Popen(LOAD_CPU + ["python3", FLOOD_PY, "127.0.0.1", str(h2_port)] + args,
                                           stdout=subprocess.PIPE, text=True) for _ in range(copies)]
            time.sleep(2 if kind == "h1" else 0.2)
            seconds = 6 if kind == "h1" else 3
            counts = []

            def count():
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    counts.append(established(port if kind == "h1" else h2_port))
                    time.sleep(0.25)

            counter = threading.Thread(target=count)
            counter.start()
            during = p99(good_client(port, seconds))
            counter.join()
            outcomes = []
            for a in attack:
                out, _ = a.communicate(timeout=30)
                if out:
                    outcomes.append(out.split()[0])
            if proc.poll() is not None:
                sys.exit(f"floods: {proxy} died under {name}")
            good_client(port, 0.1)  # still serving
            return {
                "before": before,
                "during": during,
                "rss_mib": peak_rss_kib(proc.pid) / 1024,
                "open": max(counts),
                "outcome": "/".join(sorted(set(outcomes))) if outcomes else "",
            }
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()

    def stop(self):
        self.backend_proc.terminate()
        self.backend_proc.wait()
        if not os.environ.get("FLOODS_KEEP"):
            shutil.rmtree(self.dir, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sluice", required=True)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--only", help="floods whose name contains this")
    parser.add_argument("--proxies", default=",".join(PROXIES), help="of sluice,nginx,haproxy")
    args = parser.parse_args()
    floods = [f for f in FLOODS if not args.only or args.only in f[0]]
    proxies = args.proxies.split(",")
    bench = Bench(os.path.abspath(args.sluice))
    results = {}
    try:
        for _ in range(args.rounds):
            for flood in floods:
                for proxy in proxies:  # interleaved: each round runs every proxy in turn
                    r = bench.run(proxy, flood)
                    results.setdefault((flood[0], proxy), []).append(r)
                    print(f"{flood[0]} / {proxy}: {r}", file=sys.stderr)
    finally:
        bench.stop()
    median = statistics.median
    print(f"Floods, {args.rounds} round(s), medians; {time.strftime('%Y-%m-%d %H:%M')}:\n")
    print("| flood | proxy | good p99 before | good p99 during | peak RSS | most flood connections open | flooding connection |")
    print("|---|---|---|---|---|---|---|")
    for flood in floods:
        for proxy in proxies:
            rs = results[(flood[0], proxy)]
            outcome = "/".join(sorted({r["outcome"] for r in rs if r["outcome"]}))
            print(f"| {flood[0]} | {proxy} | {median(r['before'] for r in rs):.1f} ms "
                  f"| {median(r['during'] for r in rs):.1f} ms | {median(r['rss_mib'] for r in rs):.0f} MiB "
                  f"| {median(r['open'] for r in rs):.0f} | {outcome} |")


if __name__ == "__main__":
    main()
