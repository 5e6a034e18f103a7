"""``minimesh clean``: remove what crashed runs left (namespaces, links, processes, ...),
by their journals (:func:`testbed.net.lifecycle.clean_stale_report`)."""
from __future__ import annotations

import argparse

from testbed.cli.subcommand import Subcommand
from testbed.net.lifecycle import EXIT_FAIL, EXIT_OK
from testbed.net.lifecycle import clean_stale_report, require_root

__all__ = ["SUBCOMMANDS"]


def _configure_clean(p: argparse.ArgumentParser) -> None:
    pass


def _run_clean(args: argparse.Namespace) -> int:
    require_root("clean")
    return EXIT_FAIL if clean_stale_report(quiet_if_none=False) else EXIT_OK


SUBCOMMANDS = [
    Subcommand("clean", "remove what crashed runs left (namespaces, links, processes...) by their journals",
               _configure_clean, _run_clean),
]
