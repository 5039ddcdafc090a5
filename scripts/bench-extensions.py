#!/usr/bin/env python3
"""Create time of a process session with one Chrome extension, beside a default session
(a warm browser) and a cold launch without one (a screen size no warm browser has).

    python3 scripts/bench-extensions.py [BINARY] [ROUNDS]

Starts BINARY (default target/release/cdpgate) on a fresh data directory, uploads a tiny
MV3 extension (a content script), then per round creates and terminates one session of
each kind (a pause between, so the pool is warm again) and prints the medians.
"""
import io, json, os, statistics, subprocess, sys, tempfile, time, urllib.error, urllib.request, zipfile

binary = sys.argv[1] if len(sys.argv) > 1 else "target/release/cdpgate"
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 7
key = "bench-key-0123456789abcdef"
data = tempfile.mkdtemp(prefix="cdpgate-bench-ext-")
env = dict(os.environ, CDPGATE_DATA_DIR=data, CDPGATE_LISTEN="127.0.0.1:0", CDPGATE_POOL_SIZE="1",
           CDPGATE_API_KEYS=key, CDPGATE_MAX_SESSIONS_PER_KEY="0")
broker = subprocess.Popen([binary, os.path.join(data, "none.toml")], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True)
base = None
for line in broker.stdout:
    if "listening" in line:
        addr = [w for w in line.replace('"', " ").split() if w.startswith("127.0.0.1:")][0]
        base = f"http://{addr.rstrip(',')}"
        break
assert base, "the broker did not say where it listens"


def call(method, path, body=None, ctype="application/json"):
    req = urllib.request.Request(base + path, data=body, method=method,
                                 headers={"x-api-key": key, "content-type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            text = r.read()
            return json.loads(text) if text else None
    except urllib.error.HTTPError as e:
        sys.exit(f"{method} {path}: {e.code} {e.read().decode()}")


buf = io.BytesIO()
with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
    z.writestr("manifest.json", json.dumps({"manifest_version": 3, "name": "mark", "version": "1.0",
               "content_scripts": [{"matches": ["<all_urls>"], "js": ["c.js"]}]}))
    z.writestr("c.js", "document.documentElement.dataset.cdpgateExt = '1';")
ext = call("POST", "/public/extensions", buf.getvalue(), "application/zip")["id"]

kinds = {
    "default (warm browser)": {},
    "cold launch, no extension": {"screen_config": {"width": 1281, "height": 720}},
    "cold launch, one extension": {"extensions": [ext]},
}
times = {k: [] for k in kinds}
time.sleep(3)
for _ in range(rounds):
    for kind, body in kinds.items():
        started = time.perf_counter()
        session = call("POST", "/public/sessions", json.dumps(body).encode())
        times[kind].append((time.perf_counter() - started) * 1000)
        call("POST", f"/public/sessions/{session['session_id']}/terminate")
        time.sleep(3)
broker.terminate()
broker.wait()
for kind, ms in times.items():
    print(f"{kind:30} median {statistics.median(ms):7.1f} ms  (min {min(ms):.1f}, max {max(ms):.1f}, n={len(ms)})")
