"""Binary upgrades and reloads side by side under load (BENCHMARKS.md, "Issue 21").

    python3 benches/upgrades.py --sluice target/release/sluice [--rounds N] [--upgrades N]

Each proxy gets one CPU (CPU 1) and one worker and proxies to the same nginx backend; wrk
(one thread, 100 connections) and a client that opens a fresh connection every 100 ms run
on CPU 0 with the backend. While they run, the proxy is upgraded 20 times, one after the
other, each once the previous one's old process has exited:
- sluice: SIGUSR2 (its own executable again, sockets and state handed over);
- nginx USR2: the binary upgrade (USR2 to the master, then QUIT to the old master);
- nginx reload: `nginx -s reload` (SIGHUP: new workers, the old ones finish);
- HAProxy -sf: a new process takes the listeners from the old one over its stats socket
  (`-x`, `expose-fd listeners`: the seamless reload) and soft-stops it.
Reported per proxy, as medians over the rounds: wrk's requests and errors (socket errors
and non-2xx), the fresh connections refused or failed, and the time from each signal to
the old process (nginx reload: the old worker) exiting, median and max over the upgrades.
The rounds interleave the proxies. Run by benches/upgrades.sh, which installs the tools and
builds sluice."""

import argparse
import http.client
import importlib.util
import json
import os
import re
import shutil
import signal
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
PROXIES = ["sluice", "nginx-usr2", "nginx-reload", "haproxy-sf"]
LOAD_CPU, PROXY_CPU = ["taskset", "-c", "0"], ["taskset", "-c", "1"]
LOAD_SECONDS = 30


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def wait_gone(pid, proc=None, timeout=60):
    """Seconds until `pid` exits (reaping it when it is `proc`, this script's child)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc is not None and proc.poll() is not None:
            break
        if proc is None and not alive(pid):
            break
        time.sleep(0.002)
    else:
        sys.exit(f"upgrades: process {pid} did not exit within {timeout}s")
    return time.monotonic() - start


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def read_pid(path, timeout=10, other_than=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                pid = int(f.read().strip())
            if pid != other_than:
                return pid
        except (OSError, ValueError):
            pass
        time.sleep(0.002)
    sys.exit(f"upgrades: no new pid in {path} within {timeout}s")


def prober(port, stop, result):
    """A fresh connection every 100 ms (`Connection: close`) until `stop`: (asked, failed)."""
    asked, failed = 0, []
    while not stop.is_set():
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/", headers={"Connection": "close"})
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                failed.append(str(response.status))
            conn.close()
        except OSError as e:
            failed.append(repr(e))
        asked += 1
        time.sleep(0.1)
    result.extend([asked, failed])


class Bench:
    def __init__(self, sluice):
        self.sluice = sluice
        self.dir = tempfile.mkdtemp(prefix="sluice-upgrades-")
        self.backend = free_port()
        self.backend_proc = self.spawn(LOAD_CPU, self.nginx("backend", f"""
    server {{ listen 127.0.0.1:{self.backend}; location / {{ return 200 "ok\\n"; }} }}""",
                                                            master=False), "backend")
        wait_listening(self.backend, self.backend_proc, "backend")

    def spawn(self, cpu, argv, name, env=None):
        log = open(os.path.join(self.dir, f"{name}.log"), "a")
        return subprocess.Popen(cpu + argv, stdout=log, stderr=subprocess.STDOUT, env=env)

    def write(self, name, text):
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def nginx(self, name, servers, master=True, daemon=False):
        prefix = os.path.join(self.dir, name)
        os.makedirs(os.path.join(prefix, "logs"), exist_ok=True)
        conf = self.write(f"{name}.conf", f"""daemon {"on" if daemon else "off"};
master_process {"on" if master else "off"};
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log crit;
events {{ worker_connections 10000; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    {servers}
}}
""")
        # The absolute path: a binary upgrade execs argv[0] as it is.
        return [shutil.which("nginx"), "-p", prefix, "-c", conf]

    def run(self, proxy, upgrades):
        port = free_port()
        # Kept-alive connections to the backend, as sluice's pool and HAProxy's reuse keep.
        servers = (f"upstream backend {{ server 127.0.0.1:{self.backend}; keepalive 64; }} "
                   f"server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://backend; "
                   f"proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}")
        if proxy == "sluice":
            log = os.path.join(self.dir, "sluice.json")
            open(log, "w").close()
            conf = self.write("sluice.yaml", f"""service: upgrades
listen: 127.0.0.1:{port}
upstream: http://127.0.0.1:{self.backend}
admin: {{ listen: 127.0.0.1:0, state_dir: {self.dir}/sluice-state }}
""")
            proc = subprocess.Popen(PROXY_CPU + [self.sluice, "--log-format", "json", "run", "--config", conf],
                                    stdout=subprocess.DEVNULL, stderr=open(log, "a"),
                                    env=dict(os.environ, SLUICE_LOG="info"))
        elif proxy == "nginx-usr2":
            # nginx ignores USR2 unless its master is a daemon (its parent, init).
            argv = self.nginx(proxy, servers, daemon=True)
            stale = os.path.join(self.dir, proxy, "nginx.pid")
            if os.path.exists(stale):
                os.remove(stale)
            subprocess.run(PROXY_CPU + argv, check=True)
            proc = None
        elif proxy == "nginx-reload":
            proc = self.spawn(PROXY_CPU, self.nginx(proxy, servers),
                              proxy)
        else:
            sock = os.path.join(self.dir, "haproxy.sock")
            pidfile = os.path.join(self.dir, "haproxy.pid")
            conf = self.write("haproxy.cfg", f"""global
    nbthread 1
    maxconn 9000
    pidfile {pidfile}
    stats socket {sock} mode 600 level admin expose-fd listeners
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend in
    bind 127.0.0.1:{port}
    default_backend out
backend out
    server backend 127.0.0.1:{self.backend}
""")
            haproxy = ["haproxy", "-db", "-f", conf]
            proc = self.spawn(PROXY_CPU, haproxy, proxy)
        if proc is None:
            master = read_pid(os.path.join(self.dir, proxy, "nginx.pid"))
            proc = subprocess.Popen(["sleep", "3600"])  # stands in for the daemon in wait_listening
            wait_listening(port, proc, proxy)
            proc.kill()
            proc.wait()
            current, current_proc = master, None
        else:
            wait_listening(port, proc, proxy)
            current, current_proc = proc.pid, proc

        wrk = subprocess.Popen(LOAD_CPU + ["wrk", "-t1", "-c100", "-d", f"{LOAD_SECONDS}s",
                                           f"http://127.0.0.1:{port}/"], stdout=subprocess.PIPE, text=True)
        stop, probed = threading.Event(), []
        probe = threading.Thread(target=prober, args=(port, stop, probed))
        probe.start()
        time.sleep(1)
        times = []
        started = time.monotonic()
        for _ in range(upgrades):
            if proxy == "sluice":
                with open(log) as f:
                    seen = sum(1 for _ in f)
                sent = time.monotonic()
                os.kill(current, signal.SIGUSR2)
                new = None
                while new is None:
                    with open(log) as f:
                        for line in list(f)[seen:]:
                            fields = json.loads(line).get("fields", {})
                            if fields.get("message") == "upgrade: this process took over" \
                                    and fields.get("from") == current:
                                new = fields["pid"]
                            if fields.get("message") == "upgrade failed: this process serves on":
                                sys.exit(f"upgrades: sluice's upgrade failed: {fields}")
                    time.sleep(0.002)
                wait_gone(current, current_proc)
                current, current_proc = new, None
            elif proxy == "nginx-usr2":
                pidfile = os.path.join(self.dir, proxy, "nginx.pid")
                sent = time.monotonic()
                os.kill(current, signal.SIGUSR2)
                new = read_pid(pidfile, other_than=current)
                os.kill(current, signal.SIGQUIT)
                wait_gone(current, current_proc)
                current, current_proc = new, None
            elif proxy == "nginx-reload":
                workers = children(current)
                sent = time.monotonic()
                os.kill(current, signal.SIGHUP)
                for worker in workers:
                    wait_gone(worker)
            else:
                sent = time.monotonic()
                new_proc = self.spawn(PROXY_CPU, haproxy + ["-x", sock, "-sf", str(current)], proxy)
                wait_gone(current, current_proc)
                current, current_proc = new_proc.pid, new_proc
            times.append(time.monotonic() - sent)
            time.sleep(0.2)
        looped = time.monotonic() - started
        served = []  # sluice: SIGUSR2 to the new process serving, from its log
        if proxy == "sluice":
            with open(log) as f:
                for line in f:
                    fields = json.loads(line).get("fields", {})
                    if fields.get("message") == "upgrade: the new process serves; draining":
                        served.append(fields["took_ms"])
        out, _ = wrk.communicate()
        stop.set()
        probe.join()
        os.kill(current, signal.SIGTERM if proxy == "sluice" else signal.SIGQUIT if proxy.startswith("nginx")
                else signal.SIGUSR1)
        wait_gone(current, current_proc)
        requests = int(re.search(r"(\d+) requests in", out).group(1))
        errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
        non2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
        asked, failed = probed
        return {"requests": requests, "errors": errors, "non2xx": non2xx, "asked": asked,
                "failed": len(failed), "median_ms": statistics.median(times) * 1000,
                "max_ms": max(times) * 1000, "looped_s": looped,
                "serving_ms": statistics.median(served) if served else None}

    def stop(self):
        self.backend_proc.terminate()
        self.backend_proc.wait()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sluice", required=True)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--upgrades", type=int, default=20)
    parser.add_argument("--proxies", default=",".join(PROXIES), help="of " + ",".join(PROXIES))
    args = parser.parse_args()
    proxies = args.proxies.split(",")
    bench = Bench(os.path.abspath(args.sluice))
    results = {p: [] for p in proxies}
    try:
        for r in range(args.rounds):
            for proxy in proxies:
                result = bench.run(proxy, args.upgrades)
                print(f"round {r + 1} {proxy}: {result}", flush=True)
                results[proxy].append(result)
    finally:
        bench.stop()
    print(f"\n{args.upgrades} upgrades under wrk -c100 ({LOAD_SECONDS} s) and a fresh connection every 100 ms; "
          f"medians of {args.rounds} rounds")
    print("| proxy | upgrade | wrk requests | wrk errors | non-2xx | fresh connections failed | "
          "signal to old process gone: median | max |")
    print("|---|---|---|---|---|---|---|---|")
    how = {"sluice": "SIGUSR2", "nginx-usr2": "USR2 + QUIT", "nginx-reload": "-s reload",
           "haproxy-sf": "-x -sf"}
    for proxy in proxies:
        rs = results[proxy]
        if proxy == "sluice":
            print(f"sluice, SIGUSR2 to the new process serving: median {statistics.median(r['serving_ms'] for r in rs)} ms")
        med = lambda k: statistics.median(r[k] for r in rs)
        print(f"| {proxy.split('-')[0]} | {how[proxy]} | {med('requests'):.0f} | {med('errors'):.0f} | "
              f"{med('non2xx'):.0f} | {med('failed'):.0f} of {med('asked'):.0f} | {med('median_ms'):.0f} ms | "
              f"{med('max_ms'):.0f} ms |")


if __name__ == "__main__":
    main()
