"""Lab pages' claims checked against their recorded runs (issue 15, points 2 and 4).

* Every number in a page's "Expected observations" and "What to look at" sections (outside
  code spans, sample records and references to the page's steps and questions) is a value of
  the lab's recorded full run (docs/labs/runs/<lab>.json: a verdict's number or detail, a
  parameter, the run time, a tshark line's frames) at the precision the page prints it, or a
  configured input of the experiment listed in CONFIGURED below with where it is set.
* Every `tshark ...` command on a page is one the run printed (the same capture, options and
  display filter, so its frames were counted in ``metrics.tshark``), or the comments line every
  run prints first (experiments/lablib/tshark.py, COMMENTS).
* Every Wireshark display filter in "What to look at" is either a filter the run printed (and
  then the item states the frames it found, as recorded) or sits in an item that starts with
  "Try" and claims no number: an exercise, not an observation. ``frame.comment`` is the
  comments line every run prints (without a count).
"""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any, Iterator

import pytest

from lablib.tshark import COMMENTS
from testbed.run.labpage import BEGIN, END

REPO = Path(__file__).resolve().parents[2]
LABS = sorted(p.stem for p in (REPO / "docs" / "labs" / "runs").glob("*.json"))

# Inputs of the experiments (not measurements) a page may name in its observations.
CONFIGURED: dict[str, set[str]] = {
    "canary": set(),
    "control_plane_partition": {"20", "10", "60", "30"},    # rate, cut at / length, change into the cut, after
    "crash_failover": {"10", "30", "3"},                    # crash at, run after it, lease TTL
    "etcd_leader_latency": {"25", "5", "1", "2", "3"},      # jump length, election timeouts (s), last 3 s window
    "front_proxy": {"5"},                                   # the logical_dns cluster's dns_refresh_rate
    "header_routing": {"50"},                               # rate per client kind
    "link_delay": {"150", "1", "2"},                        # per-try timeout, route timeout (s), retries
    "registry_split_brain": {"30", "1", "5", "10"},         # cut length, connect timeout, ejection times
}

_NUMBER = re.compile(r"(?<![\w.\-/])\d+(?:\.\d+)?(?![\w\-/]|\.\d)")
_CODE = re.compile(r"`[^`]*`")
_FILTER_FIELD = re.compile(r"^!?\(?(frame|http|tcp|udp|ip|dns|icmp|eth)(\.[a-z_.0-9]+)?(?=$|[\s)=!<>])")


def _run(lab: str) -> dict[str, Any]:
    return json.loads((REPO / "docs" / "labs" / "runs" / f"{lab}.json").read_text())


def _page(lab: str) -> str:
    """The page's hand-written text (the generated block left out)."""
    text = (REPO / "docs" / "labs" / f"{lab}.md").read_text()
    if BEGIN in text:
        text = text[:text.index(BEGIN)] + text[text.index(END) + len(END):]
    return text


def _section(text: str, title: str) -> str:
    m = re.search(rf"^## {title}.*?$(.*?)(?=^## |\Z)", text, re.M | re.S)
    return m.group(1) if m else ""


def _leaves(o: Any) -> Iterator[Any]:
    if isinstance(o, dict):
        for k, v in o.items():
            yield k
            yield from _leaves(v)
    elif isinstance(o, list):
        for v in o:
            yield from _leaves(v)
    else:
        yield o


def _recorded(res: dict[str, Any]) -> tuple[list[float], set[str]]:
    """The run's numeric values and the numbers written in its strings (check names, details)."""
    values: list[float] = []
    words: set[str] = set()
    for v in _leaves(res):
        if isinstance(v, bool) or v is None:
            continue
        if isinstance(v, (int, float)):
            values.append(float(v))
        else:
            words.update(_NUMBER.findall(str(v).replace("%", " ")))
            values.extend(float(w) for w in re.findall(r"\d+\.\d+|\d+", str(v)))
    return values, words


def _is_recorded(num: str, values: list[float], words: set[str]) -> bool:
    if num in words:
        return True
    places = len(num.split(".")[1]) if "." in num else 0
    want = float(num)
    return any(round(v, places) == want or round(100 * v, places) == want for v in values)


def _items(section: str) -> list[str]:
    """The section's list items (a top-level or nested bullet with its continuation lines)."""
    items: list[str] = []
    for line in section.splitlines():
        if re.match(r"\s*\* ", line) or not items:
            items.append(line)
        else:
            items[-1] += "\n" + line
    return items


def _prose(section: str) -> str:
    """The section without code spans, sample records (indented JSON lines) and references to a
    page's own steps and questions ("step 5", "question 3")."""
    text = re.sub(r"(?m)^\s{4,}\{.*\}\s*$", " ", section)
    return re.sub(r"(?i)\b(steps?|questions?)\s+\d+", " ", _CODE.sub(" ", text))


@pytest.mark.parametrize("section", ["Expected observations", "What to look at"])
@pytest.mark.parametrize("lab", LABS)
def test_page_numbers_are_the_runs(lab, section):
    text = _section(_page(lab), section)
    assert text.strip(), f"docs/labs/{lab}.md has no '{section}' section"
    values, words = _recorded(_run(lab))
    unchecked = [n for n in _NUMBER.findall(_prose(text))
                 if n not in CONFIGURED[lab] and not _is_recorded(n, values, words)]
    assert not unchecked, (f"docs/labs/{lab}.md '{section}': {unchecked} are not values of "
                           f"docs/labs/runs/{lab}.json nor configured inputs")


def _commands(text: str) -> list[list[str]]:
    return [shlex.split(span.strip("`")) for span in re.findall(r"`tshark [^`]*`", text)]


def _unprinted_commands(text: str, res: dict[str, Any]) -> list[str]:
    """The `tshark ...` commands of a page's text that are no line the run printed."""
    printed = {(r["file"], tuple(r.get("options") or ()), r["filter"]) for r in res["metrics"]["tshark"]}
    bad = []
    for argv in _commands(text):
        if "-r" not in argv or "-Y" not in argv:
            bad.append(shlex.join(argv))
            continue
        file = Path(argv[argv.index("-r") + 1]).name
        flt = argv[argv.index("-Y") + 1]
        opts = tuple(a for i, a in enumerate(argv[1:], 1) if a not in ("-r", "-Y") and argv[i - 1] not in ("-r", "-Y"))
        if (flt, opts) != (COMMENTS[0], COMMENTS[1]) and (file, opts, flt) not in printed:
            bad.append(shlex.join(argv))
    return bad


@pytest.mark.parametrize("lab", LABS)
def test_page_tshark_commands_are_the_runs(lab):
    res = _run(lab)
    bad = _unprinted_commands(_page(lab), res)
    assert not bad, (f"docs/labs/{lab}.md: {bad} are no lines the recorded run printed: "
                     f"{[(r['file'], r.get('options'), r['filter']) for r in res['metrics']['tshark']]}")


def test_readme_tshark_commands_are_the_comments_line():
    """docs/labs/README.md names no lab's capture: its only tshark command is the comments line
    every run prints first."""
    text = (REPO / "docs" / "labs" / "README.md").read_text()
    assert _commands(text), "docs/labs/README.md shows no tshark command"
    assert _unprinted_commands(text, {"metrics": {"tshark": []}}) == []


def _filter_problems(section: str, res: dict[str, Any]) -> list[str]:
    """What is wrong with the display filters of a "What to look at" section (empty: nothing)."""
    rows = {r["filter"]: r["frames"] for r in res["metrics"]["tshark"]}
    problems = []
    for item in _items(section):
        filters = [c.strip("`") for c in _CODE.findall(item) if _FILTER_FIELD.match(c.strip("`"))]
        body = item.strip().lstrip("* ")
        for flt in filters:
            if flt == COMMENTS[0]:          # printed first by every run, without a count
                continue
            if flt in rows:
                if f"{rows[flt]} frames" not in " ".join(item.split()):
                    problems.append(f"the item with `{flt}` must state the recorded count ({rows[flt]} frames)")
            elif any(flt in f for f in filters if f in rows):     # a part of a printed filter, explained
                continue
            elif not body.startswith("Try"):
                problems.append(f"`{flt}` is no filter the run printed: make it one, or an item starting "
                                f"with 'Try' (an exercise)")
            elif _NUMBER.findall(_CODE.sub(" ", body)):
                problems.append(f"the exercise with `{flt}` claims numbers no run measured")
    return problems


@pytest.mark.parametrize("lab", LABS)
def test_look_at_filters_are_recorded_or_exercises(lab):
    problems = _filter_problems(_section(_page(lab), "What to look at"), _run(lab))
    assert not problems, f"docs/labs/{lab}.md 'What to look at': {problems}"


def test_checkers_find_wrong_commands_and_filters():
    """The command and filter checks are not vacuous."""
    res = _run("canary")
    ok = 'the `tshark -r pcap/c0-eth0.pcapng -Y \'tcp.port == 15010 && http.request.uri contains "routes"\'` line'
    assert _unprinted_commands(ok, res) == []
    assert _unprinted_commands("`tshark -r pcap/c0-eth0.pcapng -Y 'tcp.port == 15010'`", res)
    assert _unprinted_commands("`tshark -r pcap/h1-eth0.pcapng -Y 'tcp.port == 15010 && http.request.uri "
                               "contains \"routes\"'`", res)
    counted = '* `tcp.port == 15010 && http.request.uri contains "routes"`: 11 frames in the recorded run\n'
    assert _filter_problems(counted, res) == []
    assert _filter_problems(counted.replace("11", "12"), res)
    assert _filter_problems("* `tcp.port == 15010`: about 1 in 20\n", res)
    assert _filter_problems("* Try `tcp.port == 15010`: about 1 in 20?\n", res)
    assert _filter_problems("* Try `tcp.port == 15010`: what do you see?\n", res) == []


def test_checker_finds_an_invented_number():
    """The number check is not vacuous: a number from an older run is not the recorded run's."""
    values, words = _recorded(_run("canary"))
    assert _is_recorded("656", values, words) and _is_recorded("5.47", values, words)
    assert not _is_recorded("601", values, words) and not _is_recorded("5.01", values, words)
