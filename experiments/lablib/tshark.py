"""The tshark lines every lab prints at its end, each run once so the count it shows is the
run's (``metrics.tshark``: file, filter, options, frames): a page's claim about a filter is
checked against that, and tests/integration/test_lab_questions.py runs every printed line again.

    print_tshark(ctx, "c0-eth0.pcapng", ['http.request && ip.dst == 10.0.0.5'])

The first line is always the run's packet comments (fault operations and milestones, in
experiment time: the same t as history.jsonl, the plots and the printed steps):
``tshark -r FILE -Y frame.comment -T fields -e frame.number -e frame.comment``.
"""
from __future__ import annotations

import shlex
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from testbed.run.experiment import Context

__all__ = ["print_tshark", "tshark_lines", "COMMENTS", "V2_ANSWERS"]

COMMENTS = ("frame.comment", ("-T", "fields", "-e", "frame.number", "-e", "frame.comment"))


def tshark_lines(pcap: Path, args: Sequence[str], display_filter: str) -> list[str]:
    r = subprocess.run(["tshark", "-r", str(pcap), *args, "-Y", display_filter], capture_output=True, text=True)
    return [ln for ln in r.stdout.splitlines() if ln.strip()] if r.returncode == 0 else []


def print_tshark(ctx: Context, file: str, filters: Sequence[str | tuple[str, Sequence[str]]]) -> None:
    """Print (and record in ``metrics.tshark``) a tshark line per filter on <capture dir>/``file``;
    a filter is a string or ``(filter, extra tshark options)``, e.g. a Decode As."""
    if ctx.args.no_capture:
        return
    pcap = (ctx.args.capture or ctx.out / "pcap").resolve() / file
    rows = ctx.metrics.setdefault("tshark", [])
    print(f"\nin Wireshark (or tshark), {pcap.parent}/ (names: -N n; times: frame.time_relative is "
          "capture time, the comments give experiment time t):")
    # the comments are written after the analysis: no count here
    line = shlex.join(["tshark", "-r", str(pcap), "-Y", COMMENTS[0], *COMMENTS[1]])
    print(f"  {line}    # the comments' text, t = experiment time")
    for item in filters:
        flt, opts = (item, ()) if isinstance(item, str) else item
        n = len(tshark_lines(pcap, opts, flt)) if pcap.exists() else 0
        line = shlex.join(["tshark", "-r", str(pcap), *opts, "-Y", flt])
        rows.append({"file": file, "filter": flt, "options": list(opts), "frames": n})
        print(f"  {line}    # {n} frames")


V2_ANSWERS = 'http.response && tcp.srcport == 8080 && http contains "\\"version\\": \\"v2\\""'   # echo v2's answers
