"""The live page (`minimesh up --ui`) and report.html in a real headless Chromium (Debian's
chromium + chromium-driver, driven by Selenium; no browser download). Root only: the mesh
runs in namespaces, and the page server listens on loopback in the test's own namespace
(under /work/bin/mm-isolated the browser runs inside the same isolation, from this process).
Screenshots go to $MINIMESH_TEST_ARTIFACTS/ui (default out/test-artifacts/ui)."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from test_net_support import TAG, assert_nothing_left, interactive_up, snapshot

REPO = Path(__file__).resolve().parents[2]
CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ARTIFACTS = Path(os.environ.get("MINIMESH_TEST_ARTIFACTS", REPO / "out" / "test-artifacts")) / "ui"

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
              pytest.mark.skipif(not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)),
                                 reason="needs Debian's chromium and chromium-driver (./minimesh test installs them)")]
P = f"ui{TAG}"
HOSTS = [f"{P}{h}" for h in ("c", "h1", "h2", "e1", "cp")]


def topology(tmp_path: Path) -> Path:
    p = tmp_path / f"{P}.yaml"
    p.write_text("\n".join([f"name: {P}", "hosts:", *[f"  {h}: {{}}" for h in HOSTS], "switches:", f"  {P}s: {{}}",
                            "links:", *[f"  - {{between: [{h}, {P}s]}}" for h in HOSTS]]) + f"""
mesh:
  registry: {{members: [{P}e1]}}
  control_plane: {{host: {P}cp}}
  clients: [{P}c]
  services:
    echo: {{port: 8080, run: "builtin:echo", versions: {{v1: {{hosts: [{P}h1]}}, v2: {{hosts: [{P}h2]}}}}}}
""")
    return p


@pytest.fixture
def browser():
    pytest.importorskip("selenium")
    from selenium import webdriver
    os.environ.setdefault("SE_OFFLINE", "true")          # Selenium Manager must not try to download
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1300", "--no-first-run", "--disable-extensions"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=DRIVER))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(what: str, cond, timeout_s: float = 30.0, every_s: float = 0.25):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            last = cond()
        except Exception as e:   # the page may be re-rendering: try again
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}; last: {last!r}")


class Stderr:
    """Lines of the up process's stderr, read by a thread (its stdout drained by another)."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: list[str] = []
        self.out: list[str] = []
        for stream, into in ((proc.stderr, self.lines), (proc.stdout, self.out)):
            threading.Thread(target=self._read, args=(stream, into), daemon=True).start()

    @staticmethod
    def _read(stream, into: list[str]) -> None:
        for line in stream:
            into.append(line)

    def find(self, pattern: str) -> re.Match | None:
        for line in list(self.lines):
            m = re.search(pattern, line)
            if m:
                return m
        return None


def severe(driver, live: bool = False) -> list[str]:
    """Console errors. On the live page, Chromium's ERR_NETWORK_CHANGED on the event stream
    is not one: the testbed adds interfaces in the browser's namespace, Chromium then
    drops its connections and EventSource reconnects (docs/ui.md)."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"
            and not (live and "/events" in e["message"] and "ERR_NETWORK_CHANGED" in e["message"])]


def post(url: str, body: dict, headers: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url + "api/action", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def edge_p99(driver, edge: str) -> float | None:
    v = driver.find_element("css selector", f'[data-edge="{edge}"]').get_attribute("data-p99")
    return float(v) if v not in (None, "", "null") else None


DR = """apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: echo}
spec:
  host: echo
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"""
VS_BAD = """apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: echo}
spec:
  hosts: [echo]
  http:
  - route:
    - destination: {host: echo, subset: v9}
"""


def run_action(driver, command: str, args: str, yaml: str = "") -> tuple[bool, str]:
    from selenium.webdriver.support.ui import Select
    out = driver.find_element("id", "action-output")
    driver.execute_script("arguments[0].removeAttribute('data-ok'); arguments[0].textContent = '';", out)
    Select(driver.find_element("id", "action-command")).select_by_visible_text(command)
    box = driver.find_element("id", "action-args")
    box.clear()
    box.send_keys(args)
    driver.execute_script("arguments[0].value = arguments[1];", driver.find_element("id", "action-yaml"), yaml)
    driver.find_element("id", "action-run").click()
    ok = wait_for(f"the answer to {command} {args}", lambda: out.get_attribute("data-ok"), 30)
    return ok == "true", out.text


def test_live_page_shows_the_mesh_and_drives_a_link_delay(tmp_path, browser):
    """The page of a running mesh names every host, service, version and instance; a link
    delay set from the page goes through the shell (same history, same capture comment),
    raises the client's p99 to that service, and shows in the timeline; a rejected action
    shows the shell's own error and changes nothing; a wrong token, a foreign Origin or
    Host are refused."""
    out, cap = tmp_path / "out", tmp_path / "pcap"
    before = snapshot()
    proc = interactive_up(tmp_path, str(topology(tmp_path)), "--link-backend", "userspace", "--ui",
                          "--out", str(out), "--capture", str(cap))
    err = Stderr(proc)
    try:
        m = wait_for("the page's URL", lambda: err.find(r"live view at (http://127\.0\.0\.1:\d+/)#token=(\S+)"), 90)
        url, token = m.group(1), m.group(2)
        proc.stdin.write(f"{P}c sh -c 'while true; do curl -s -o /dev/null -m 2 http://echo:8080/; sleep 0.01; done' "
                         f">/dev/null 2>&1 &\n")
        proc.stdin.flush()
        browser.get(f"{url}#token={token}")
        ids = HOSTS + [f"{P}s", "svc:echo", "ver:echo/v1", "ver:echo/v2", "inst:echo-v1-0", "inst:echo-v2-0"]
        for i in ids:
            wait_for(i, lambda i=i: browser.find_elements("css selector", f'[data-id="{i}"]'), 30)
        for text in [*HOSTS, "echo", "v1", "v2", "echo-v1-0", "echo-v2-0"]:
            assert text in browser.find_element("tag name", "body").text
        assert "token=" not in browser.current_url, "the token leaves the address bar"
        edge = f"client:{P}c->svc:echo"
        base = wait_for("traffic on the client's edge", lambda: edge_p99(browser, edge), 40)
        browser.save_screenshot(str(ARTIFACTS / "live.png"))

        ok, text = run_action(browser, "link-set", f"{P}h1 {P}s delay=100ms")
        assert ok and f"#0: link {P}h1-{P}s delay=100ms" in text, text
        wait_for("the edge's p99 to rise", lambda: (edge_p99(browser, edge) or 0) >= max(150.0, base + 100), 60)
        wait_for("the fault in the timeline", lambda: any(f"link {P}h1-{P}s delay=100ms" in li.text for li in
                                                         browser.find_elements("css selector", "#timeline li.fault")))
        link = browser.find_element("css selector", f'[data-link="{P}h1-{P}s"]')
        assert "100ms" in link.text
        browser.save_screenshot(str(ARTIFACTS / "live-delay.png"))

        ok, text = run_action(browser, "link-set", f"{P}h1 nosuch delay=5ms")
        assert not ok and "*** no node 'nosuch'" in text, text
        proc.stdin.write(f"link-set {P}h1 nosuch delay=5ms\n")     # typed: the same words
        proc.stdin.flush()
        wait_for("the shell's error", lambda: err.find(r"\*\*\* no node 'nosuch'"), 20)
        assert err.find(r"\*\*\* no node 'nosuch'.*").group(0).strip() == text.strip().splitlines()[-1].strip()
        assert "100ms" in browser.find_element("css selector", f'[data-link="{P}h1-{P}s"]').text

        ok, text = run_action(browser, "crash", "echo-v2-0")          # a process fault from the page
        assert ok, text
        wait_for("the crash marked", lambda: "CRASHED" in browser.find_element(
            "css selector", '[data-id="inst:echo-v2-0"]').text and "echo-v2-0 crashed" in browser.find_element(
            "css selector", f'[data-id="{P}h2"]').text)
        ok, text = run_action(browser, "restart", "echo-v2-0")
        assert ok, text
        wait_for("the instance back", lambda: "CRASHED" not in browser.find_element(
            "css selector", '[data-id="inst:echo-v2-0"]').text, 40)

        version = wait_for("Pilot's version", lambda: re.search(r"config version (\d+)", browser.find_element(
            "id", "control").text)).group(1)
        ok, text = run_action(browser, "apply", "", DR + "---\n" + VS_BAD)   # Galley rejects: nothing changes
        assert not ok and "IST0101" in text and "rejected: nothing was changed" in text, text
        time.sleep(1.5)
        assert f"config version {version}," in browser.find_element("id", "control").text
        ok, text = run_action(browser, "apply", "", DR)
        assert ok and "applied 1 file(s)" in text, text
        wait_for("the rule in Pilot's table", lambda: "DestinationRule/echo" in browser.find_element(
            "id", "control").text)

        origin = url.rstrip("/")
        body = {"command": "link-set", "args": f"{P}h2 {P}s delay=50ms"}
        assert post(url, body, {"Origin": origin, "X-Minimesh-Token": "wrong"})[0] == 403
        assert post(url, body, {"Origin": "http://evil.example", "X-Minimesh-Token": token})[0] == 403
        port = url.rstrip("/").rsplit(":", 1)[1]
        assert post(url, body, {"Origin": origin, "X-Minimesh-Token": token, "Host": f"evil.example:{port}"})[0] == 403
        assert post(url, {"command": "sh", "args": "x"}, {"Origin": origin, "X-Minimesh-Token": token})[0] == 400
        errors = severe(browser, live=True)
        assert not errors, errors
        proc.stdin.write("exit\n")
        proc.stdin.flush()
        proc.wait(timeout=90)
    finally:
        if proc.poll() is None:             # a failed step: tear the testbed down as Ctrl-C does
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert proc.returncode == 1, "".join(err.lines)           # the typed link-set failed
    from testbed.history import read_history
    faults = read_history(out / "history.jsonl").faults
    assert [(f.phase, f.description) for f in faults][:3] == [
        ("apply", f"link {P}h1-{P}s delay=100ms"), ("apply", "crash echo-v2-0 (SIGKILL)"),
        ("revert", "crash echo-v2-0 (SIGKILL)")], faults
    comments = subprocess.run(["tshark", "-r", str(cap / f"{P}c-eth0.pcapng"), "-Y", "frame.comment", "-T",
                               "fields", "-e", "frame.comment"], capture_output=True, text=True).stdout
    assert "minimesh fault #0 apply" in comments and "delay=100ms" in comments, comments[:2000]
    report = out / "report.html"
    assert report.exists(), "".join(err.lines)
    browser.get("about:blank")
    browser.get_log("browser")          # the live page's stream, ended by the exit: not the report's
    browser.get(report.as_uri())
    wait_for("the report's service graph", lambda: browser.find_elements("css selector", '[data-id="ver:echo/v2"]'))
    spans = [s.get_attribute("data-span") for s in browser.find_elements("css selector", "[data-span]")]
    assert any("delay=100ms" in s for s in spans), spans
    browser.save_screenshot(str(ARTIFACTS / "up-report.png"))
    assert not severe(browser), severe(browser)
    assert_nothing_left(before)


def test_experiment_report_opens_from_file_without_errors(tmp_path, browser):
    """An experiment's report.html (link_delay --quick) opens from file:// with no network
    and no console error, with its checks, timeline fault window, plots and capture links."""
    out = tmp_path / "link_delay"
    r = subprocess.run([sys.executable, str(REPO / "experiments" / "link_delay.py"), "--quick", "--out", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=180)
    report = out / "report.html"
    assert report.exists(), r.stdout[-2000:] + r.stderr[-2000:]
    assert f"report {report}" in r.stdout
    text = report.read_text()
    assert "http://" not in text.replace("http://www.w3.org/2000/svg", ""), "no network reference"
    browser.get(report.as_uri())
    wait_for("the checks", lambda: browser.find_elements("css selector", "#checks tr"))
    res = json.loads((out / "results.json").read_text())
    body = browser.find_element("tag name", "body").text
    for name in res["verdicts"]:
        assert name in body
    assert browser.find_elements("css selector", "[data-span]"), "the fault window"
    assert browser.find_elements("css selector", "img.plot"), "the plots"
    assert browser.find_elements("css selector", "#captures a"), "the capture links"
    browser.save_screenshot(str(ARTIFACTS / "experiment-report.png"))
    assert not severe(browser), severe(browser)
    shutil.rmtree(out / "pcap", ignore_errors=True)
