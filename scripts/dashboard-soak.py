#!/usr/bin/env python3
"""The dashboard's soak benchmark: its page stays responsive at 10 updates a second for 10 minutes.

Runs `loadtest run` (the embedded pipeline under a 60 orders/s load, with its dashboard on a free port), opens the
page in headless Chromium through chromedriver (WebDriver is plain HTTP: no client library needed), and reads the
page's own measure of itself (`window.pageCost()`: the work each update takes, the chart points it keeps, its DOM
nodes and JS heap) once a minute. Fails unless, over the whole session, the page received ten updates a second,
each update's work stayed under one 60 Hz frame at p99, and the points, DOM and heap stayed bounded.

    cargo build --release -p loadtest
    scripts/dashboard-soak.py                       # 10 minutes
    SOAK_MINUTES=1 scripts/dashboard-soak.py        # a quick look

Needs Debian's chromium and chromium-driver (apt).
"""
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

MINUTES = float(os.environ.get("SOAK_MINUTES", "10"))
LOADTEST = os.environ.get("LOADTEST", "target/release/loadtest")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# One 60 Hz frame: an update handled within it never makes the page stutter.
FRAME_MS = 16.7


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def webdriver(base, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.load(answer)["value"]


def main():
    results = tempfile.mkdtemp(prefix="dashboard-soak-")
    load = subprocess.Popen(
        [LOADTEST, "--no-progress", "--results-dir", results, "run", "--rate", "60/s",
         "--duration", f"{int(MINUTES * 60) + 60}s", "--dashboard-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    driver = None
    try:
        url = None
        for line in load.stdout:
            found = re.search(r"dashboard: (http://\S+)", line)
            if found:
                url = found.group(1)
                break
        if not url:
            sys.exit("dashboard-soak: loadtest printed no dashboard URL")
        port = free_port()
        driver = subprocess.Popen([CHROMEDRIVER, f"--port={port}"], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                webdriver(base, "GET", "/status")
                break
            except OSError:
                time.sleep(0.1)
        flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,1300", "--enable-precise-memory-info"]
        session = webdriver(base, "POST", "/session", {"capabilities": {"alwaysMatch": {
            "goog:chromeOptions": {"binary": CHROMIUM, "args": flags}}}})["sessionId"]
        webdriver(base, "POST", f"/session/{session}/url", {"url": url})
        started = time.time()
        readings = []
        while time.time() - started < MINUTES * 60:
            time.sleep(min(60, MINUTES * 60 - (time.time() - started)) or 1)
            cost = webdriver(base, "POST", f"/session/{session}/execute/sync",
                             {"script": "return window.pageCost()", "args": []})
            cost["minute"] = round((time.time() - started) / 60, 1)
            readings.append(cost)
            print(json.dumps(cost), flush=True)
        webdriver(base, "DELETE", f"/session/{session}")
    finally:
        if driver:
            driver.kill()
        load.kill()

    first, last = readings[0], readings[-1]
    seconds = (last["minute"] - 0) * 60
    per_second = last["updates"] / seconds
    worst_p99 = max(r["p99_ms"] for r in readings)
    print(f"{last['updates']} updates in {seconds:.0f} s ({per_second:.1f}/s); per-update work p99 at most "
          f"{worst_p99:.2f} ms (max {max(r['max_ms'] for r in readings):.1f} ms); chart points {last['points']}; "
          f"DOM nodes {first['dom_nodes']} → {last['dom_nodes']}; JS heap {first['heap_mb']:.1f} → "
          f"{last['heap_mb']:.1f} MB")
    problems = []
    if per_second < 9.5:
        problems.append(f"{per_second:.1f} updates/s, not 10")
    if worst_p99 > FRAME_MS:
        problems.append(f"per-update work p99 {worst_p99:.1f} ms, over one frame")
    if last["points"] > 600:
        problems.append(f"{last['points']} chart points kept")
    if last["dom_nodes"] > first["dom_nodes"] * 1.2 + 50:
        problems.append("the DOM grew")
    if last["heap_mb"] > max(first["heap_mb"] * 2, first["heap_mb"] + 10):
        problems.append("the JS heap grew")
    if problems:
        sys.exit("dashboard-soak: " + "; ".join(problems))
    print("dashboard-soak: ok")


if __name__ == "__main__":
    main()
