#!/usr/bin/env python3
"""CPU and time a Chromium launch costs, per set of flags, side by side (alternated).

Each launch starts Chromium as the broker does (its own process group, headless, a fresh
user-data directory, about:blank), waits for its DevTools address and for /json/version
to answer, lets it settle for SETTLE seconds (what it does at start that a session never
asks for keeps running after it is ready), then reads the CPU time of every process in
its group (user + system, reaped children included) and their memory (PSS) and kills
the group.

usage: [SHELL_VARIANTS=1] scripts/bench-launch.py ROUNDS [SETTLE_SECONDS]
"""
import json, os, re, signal, statistics, subprocess, sys, tempfile, time, urllib.request

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 5
SETTLE = float(sys.argv[2]) if len(sys.argv) > 2 else 2.0
TICK = os.sysconf("SC_CLK_TCK")

# The broker's flags before the preloaded WebUIs were turned off (src/browser/launcher.rs),
# without the proxy (nothing is loaded).
BEFORE = [
    "--headless", "--disable-gpu", "--disable-quic", "--no-first-run", "--no-default-browser-check",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--mute-audio", "--password-store=basic", "--test-type",
    "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
    "--window-size=1280,807", "--screen-info={1280x720}",
]
if os.geteuid() == 0:
    BEFORE.append("--no-sandbox")
# Headless Chromium preloads the omnibox popup's WebUI (two hidden browser_ui targets, one
# renderer): most of a launch's CPU, for a popup no session ever shows.
NOW = BEFORE + ["--disable-features=WebUIOmniboxPopup,WebUIOmniboxAimPopup"]
# More of what Chrome does at start that a session never needs (tried: crash reporting,
# field trials, component extensions, translation, optimization hints, media router).
LEAN = [
    "--disable-breakpad", "--disable-crash-reporter", "--disable-field-trial-config",
    "--disable-component-extensions-with-background-pages", "--disable-default-apps",
    "--disable-extensions", "--no-service-autorun", "--metrics-recording-only",
    "--disable-client-side-phishing-detection", "--disable-domain-reliability",
    "--disable-features=WebUIOmniboxPopup,WebUIOmniboxAimPopup,Translate,OptimizationHints,MediaRouter,"
    "DialMediaRouteProvider,AutofillServerCommunication,CertificateTransparencyComponentUpdater,"
    "InterestFeedContentSuggestions,PrivacySandboxSettings4,SegmentationPlatform,ChromeWhatsNewUI",
]
CHROMIUM = "/usr/bin/chromium"
# Debian's chromium-headless-shell: the same Chromium built without the browser's UI, what
# context sessions' shared browsers run when it is installed (`context_chrome_path`).
SHELL = "/usr/lib/chromium/chromium-headless-shell"
VARIANTS = {"before": (CHROMIUM, BEFORE), "now": (CHROMIUM, NOW), "now+more": (CHROMIUM, BEFORE + LEAN)}
if os.path.exists(SHELL):
    VARIANTS["headless shell, now"] = (SHELL, NOW)
# SHELL_VARIANTS=1: what the headless shell, which process sessions run by default, might
# still do without (launch-time processes and services).
if os.environ.get("SHELL_VARIANTS") and os.path.exists(SHELL):
    VARIANTS = {
        "shell, now": (SHELL, NOW),
        "shell + lean": (SHELL, BEFORE + LEAN),
        "shell + in-process GPU": (SHELL, NOW + ["--in-process-gpu"]),
        "shell + no zygote": (SHELL, NOW + ["--no-zygote"]),
        "shell + no spare renderer": (SHELL, BEFORE + ["--disable-features=WebUIOmniboxPopup,WebUIOmniboxAimPopup,"
                                                       "SpareRendererForSitePerProcess"]),
        "shell + no software rasterizer": (SHELL, NOW + ["--disable-software-rasterizer"]),
        "shell + single process": (SHELL, NOW + ["--single-process"]),
        "shell + single process, no zygote": (SHELL, NOW + ["--single-process", "--no-zygote"]),
    }


def group_stats(pgid):
    """/proc/PID/stat's fields after the name, and the PID, of every process in the group."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # pgrp is field 5 (index 2 after the name).
        if int(fields[2]) == pgid:
            yield pid, fields


def group_cpu(pgid):
    # utime, stime, cutime, cstime: fields 14-17.
    return sum(sum(int(x) for x in fields[11:15]) for _, fields in group_stats(pgid)) / TICK


def group_pss_mib(pgid):
    """Proportional set size of every process in the group, MiB (what the group holds of
    memory, shared pages divided among their users)."""
    total = 0
    for pid, _ in group_stats(pgid):
        try:
            total += sum(int(line.split()[1]) for line in open(f"/proc/{pid}/smaps_rollup") if line.startswith("Pss:"))
        except OSError:
            continue
    return total / 1024


def launch(binary, flags):
    with tempfile.TemporaryDirectory() as d:
        started = time.perf_counter()
        p = subprocess.Popen([binary, *flags, f"--user-data-dir={d}", "about:blank"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             start_new_session=True, text=True)
        port = None
        for line in p.stderr:
            m = re.match(r"DevTools listening on ws://127.0.0.1:(\d+)/", line)
            if m:
                port = m.group(1)
                break
        if port is None:
            raise SystemExit(f"chromium did not start with {flags}")
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/json/version", timeout=2).read()
                break
            except OSError:
                time.sleep(0.02)
        ready = time.perf_counter() - started
        time.sleep(SETTLE)
        cpu = group_cpu(p.pid)
        pss = group_pss_mib(p.pid)
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        return ready, cpu, pss


results = {name: {"ready_s": [], "cpu_s": [], "pss_mib": []} for name in VARIANTS}
for _ in range(ROUNDS):
    for name, (binary, flags) in VARIANTS.items():
        ready, cpu, pss = launch(binary, flags)
        results[name]["ready_s"].append(ready)
        results[name]["cpu_s"].append(cpu)
        results[name]["pss_mib"].append(pss)
        time.sleep(0.5)
print(json.dumps({name: {k: round(statistics.median(v), 3) for k, v in r.items()} | {"n": ROUNDS}
                  for name, r in results.items()}, indent=2))
