#!/usr/bin/env python3
"""A cluster at scale, simulated on this machine: NODES cdpgate nodes on one Redis, whose
sessions front a stand-in browser (bring-your-own sessions on wsload's DevTools echo
server, so no Chrome is needed), SESSIONS sessions created and listed through random nodes.

Measures, and prints as Markdown:
  - create latency through random nodes (p50/p99) and creates per second;
  - the placement read (every node's load from Redis, what a create on a full node reads
    before choosing another) with NODES nodes, through GET /admin/cluster;
  - list latency with SESSIONS records (first page, a status filter, a deep offset);
  - Redis memory per session;
  - the cluster's background load on Redis (heartbeats, reconcile, reaper), per command;
  - what losing a node costs: kill -9 one node, time until all its sessions read
    `terminated`/`node lost` elsewhere, and the Redis commands the reap took.

Everything listens on 127.0.0.1 and is stopped at the end.
usage: scripts/sim-cluster.py [NODES] [SESSIONS] [CONCURRENCY]
(scripts/sim-cluster.sh builds the binaries first.)"""

import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

NODES = int(sys.argv[1]) if len(sys.argv) > 1 else 20
SESSIONS = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
CONCURRENCY = int(sys.argv[3]) if len(sys.argv) > 3 else 16
KEY = "sim-key-0123456789abcdef"
ADMIN = "sim-admin-key-0123456789"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_for_line(path, pattern, limit=30):
    deadline = time.time() + limit
    while time.time() < deadline:
        try:
            m = re.search(pattern, open(path).read())
            if m:
                return m.group(1)
        except FileNotFoundError:
            pass
        time.sleep(0.05)
    sys.exit(f"no {pattern!r} in {path}:\n" + open(path).read())


class Redis:
    """Just enough of the Redis protocol for INFO and DBSIZE."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.file = self.sock.makefile("rb")

    def call(self, *args):
        out = f"*{len(args)}\r\n" + "".join(f"${len(str(a).encode())}\r\n{a}\r\n" for a in args)
        self.sock.sendall(out.encode())
        return self.read()

    def read(self):
        line = self.file.readline().rstrip(b"\r\n")
        kind, rest = line[:1], line[1:]
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self.file.read(n + 2)[:-2].decode()
        if kind == b":":
            return int(rest)
        if kind == b"*":
            return [self.read() for _ in range(int(rest))]
        return rest.decode()

    def info(self, section):
        text = self.call("INFO", section)
        return dict(l.split(":", 1) for l in text.splitlines() if ":" in l and not l.startswith("#"))

    def commandstats(self):
        stats = {}
        for k, v in self.info("commandstats").items():
            calls = int(re.search(r"calls=(\d+)", v).group(1))
            stats[k.removeprefix("cmdstat_")] = calls
        return stats


class Client:
    """One keep-alive connection per node, per thread."""

    def __init__(self, addrs):
        self.addrs = addrs
        self.conns = {}

    def call(self, addr, method, path, body=None, headers=None):
        h = {"X-API-Key": KEY, "Content-Type": "application/json"}
        h.update(headers or {})
        for attempt in range(2):
            conn = self.conns.get(addr)
            if conn is None:
                host, port = addr.rsplit(":", 1)
                conn = self.conns[addr] = http.client.HTTPConnection(host, int(port), timeout=60)
            try:
                conn.request(method, path, body=body, headers=h)
                r = conn.getresponse()
                data = r.read()
                return r.status, data
            except (http.client.HTTPException, OSError):
                conn.close()
                self.conns.pop(addr, None)
                if attempt:
                    raise


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def ms(v):
    return f"{v * 1000:.2f}"


def main():
    tmp = tempfile.mkdtemp(prefix="cdpgate-sim-")
    procs = []

    def start(args, log, env=None):
        p = subprocess.Popen(args, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)
        procs.append(p)
        return p

    try:
        redis_port = free_port()
        start(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
              f"{tmp}/redis.log")
        echo_log = f"{tmp}/echo.log"
        start([f"{ROOT}/target/release/wsload", "echo", "--listen", "127.0.0.1:0"], echo_log)
        echo = wait_for_line(echo_log, r"listening on (\S+)")
        time.sleep(0.3)
        redis = Redis(redis_port)
        memory_empty = int(redis.info("memory")["used_memory"])

        nodes = {}
        for i in range(NODES):
            name = f"node-{i:02d}"
            env = dict(os.environ, CDPGATE_LISTEN="127.0.0.1:0", CDPGATE_DATA_DIR=f"{tmp}/{name}",
                       CDPGATE_API_KEYS=KEY, CDPGATE_ADMIN_KEY=ADMIN,
                       CDPGATE_REDIS_URL=f"redis://127.0.0.1:{redis_port}/", CDPGATE_NODE_ID=name,
                       CDPGATE_CLUSTER_SECRET="sim-cluster-secret-0123456789abcdef",
                       CDPGATE_PROFILE_STORE=f"{tmp}/profiles", CDPGATE_BYO_ALLOW="127.0.0.0/8",
                       CDPGATE_BROWSER_EGRESS_ALLOW="loopback", CDPGATE_MAX_SESSIONS_PER_KEY="0",
                       CDPGATE_MAX_BYO_SESSIONS_PER_KEY="0",
                       CDPGATE_POOL_SIZE="0", CDPGATE_MAX_SESSIONS="4", CDPGATE_CREATES_PER_MINUTE="0",
                       RUST_LOG="warn")
            log = f"{tmp}/{name}.log"
            proc = start([f"{ROOT}/target/release/cdpgate", f"{tmp}/no-config.toml"], log, env)
            nodes[name] = (proc, log)
            # Each node measures Chrome's window once at start (one launch): started ten at a
            # time, so that a hundred do not launch Chrome at once on two cores.
            if len(nodes) % 10 == 0 or i == NODES - 1:
                for _, pending in list(nodes.values())[-10:]:
                    wait_for_line(pending, r"listening on (\S+)", limit=120)
        addrs = {name: wait_for_line(log, r"listening on (\S+)") for name, (_, log) in nodes.items()}
        names = sorted(addrs)
        time.sleep(1)
        print(f"# {NODES} nodes, {SESSIONS} sessions, {CONCURRENCY} clients\n")

        # Creates through random nodes.
        body = json.dumps({"ttl": 86400, "cdp_url": f"ws://{echo}/devtools/browser/echo"})
        times, owners, failures = [], {}, []
        lock = threading.Lock()
        counter = iter(range(SESSIONS))

        def creator():
            client = Client(addrs)
            while True:
                with lock:
                    if next(counter, None) is None:
                        return
                name = random.choice(names)
                t0 = time.perf_counter()
                status, data = client.call(addrs[name], "POST", "/public/sessions", body)
                dt = time.perf_counter() - t0
                with lock:
                    if status == 201:
                        times.append(dt)
                        owners[json.loads(data)["session_id"]] = name
                    else:
                        failures.append((status, data[:200]))

        stats_before = redis.commandstats()
        started = time.perf_counter()
        threads = [threading.Thread(target=creator) for _ in range(CONCURRENCY)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - started
        stats_after = redis.commandstats()
        per_create = {c: (stats_after[c] - stats_before.get(c, 0)) / max(1, len(times)) for c in stats_after}
        print("## Creates through random nodes\n")
        print(f"{len(times)} created, {len(failures)} refused {failures[:3]}; {len(times) / elapsed:.0f} creates/s")
        print(f"create latency: p50 {ms(pct(times, 0.5))} ms, p99 {ms(pct(times, 0.99))} ms, "
              f"max {ms(max(times))} ms")
        print("Redis commands per create (background included): "
              + ", ".join(f"{c} {n:.2f}" for c, n in sorted(per_create.items(), key=lambda x: -x[1]) if n >= 0.01)
              + f"; {sum(per_create.values()):.1f} in all\n")

        time.sleep(3)
        memory_full = int(redis.info("memory")["used_memory"])
        print("## Redis memory\n")
        print(f"{(memory_full - memory_empty) / 1024 / 1024:.1f} MiB for {len(times)} sessions: "
              f"{(memory_full - memory_empty) / max(1, len(times)):.0f} bytes per session "
              f"(record JSON and its index entries)\n")

        # The placement read and lists.
        client = Client(addrs)

        def timed(path, n, headers=None):
            samples = []
            for _ in range(n):
                name = random.choice(names)
                t0 = time.perf_counter()
                status, data = client.call(addrs[name], "GET", path, headers=headers)
                samples.append(time.perf_counter() - t0)
                assert status == 200, (status, data[:200])
            return samples, data

        print("## Reads with this many records\n")
        print("| read | p50 ms | p99 ms |")
        print("|---|---|---|")
        s, data = timed("/admin/cluster", 200, {"X-Admin-Key": ADMIN})
        print(f"| placement read: every node's load (`GET /admin/cluster`, {NODES} nodes) | {ms(pct(s, .5))} | {ms(pct(s, .99))} |")
        for label, path in [("list, first page of 100", "/public/sessions?limit=100"),
                            ("list, active only, 100", "/public/sessions?status=active&limit=100"),
                            (f"list, offset {SESSIONS - 100}", f"/public/sessions?limit=100&offset={SESSIONS - 100}")]:
            s, data = timed(path, 200)
            total = json.loads(data).get("total")
            print(f"| {label} (total {total}) | {ms(pct(s, .5))} | {ms(pct(s, .99))} |")
        some = random.sample(list(owners), min(200, len(owners)))
        samples = []
        for sid in some:
            t0 = time.perf_counter()
            status, _ = client.call(addrs[random.choice(names)], "GET", f"/public/sessions/{sid}")
            samples.append(time.perf_counter() - t0)
            assert status == 200
        print(f"| one session by id | {ms(pct(samples, .5))} | {ms(pct(samples, .99))} |\n")

        # Background load: what the cluster asks of Redis while nobody calls it.
        window = 10
        before = redis.commandstats()
        time.sleep(window)
        after = redis.commandstats()
        print(f"## Background load on Redis, idle, {window} s window\n")
        print("| command | calls/s |")
        print("|---|---|")
        total = 0
        for cmd in sorted(after, key=lambda c: -(after[c] - before.get(c, 0))):
            rate = (after[cmd] - before.get(cmd, 0)) / window
            total += rate
            if rate >= 0.05:
                print(f"| {cmd} | {rate:.1f} |")
        print(f"| **all** | **{total:.1f}** |\n")

        # A node lost.
        victim = names[-1]
        lost = [sid for sid, owner in owners.items() if owner == victim]
        before = redis.commandstats()
        killed = time.perf_counter()
        nodes[victim][0].send_signal(signal.SIGKILL)
        reader = names[0]
        deadline = killed + 60
        pending = set(lost)
        while pending and time.perf_counter() < deadline:
            for sid in list(pending)[:50]:
                status, data = client.call(addrs[reader], "GET", f"/public/sessions/{sid}")
                if status == 200 and json.loads(data).get("end_reason") == "node lost":
                    pending.discard(sid)
            time.sleep(0.2)
        took = time.perf_counter() - killed
        after = redis.commandstats()
        extra = {c: after[c] - before.get(c, 0) for c in after}
        print("## A node lost\n")
        print(f"kill -9 {victim} with {len(lost)} sessions: all read `node lost` after {took:.1f} s "
              f"({len(pending)} still active); Redis calls meanwhile (all nodes, background included): "
              + ", ".join(f"{c} {n}" for c, n in sorted(extra.items(), key=lambda x: -x[1]) if n > 0) + "\n")
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
