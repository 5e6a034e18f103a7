"""Running a network from start to teardown, for the CLI and the experiment runner alike.

:func:`run_testbed` cleans up after crashed runs, builds a :class:`~testbed.net.network.Testbed`,
runs a body on it and tears it down on every exit path: normal end, exception, Ctrl-C,
SIGTERM/SIGHUP (:class:`teardown_signals` turns them into :class:`Terminated`).

Exit status: :data:`EXIT_OK` (0), :data:`EXIT_FAIL` (1: a failure, a startup error the user
can fix, a failed cleanup), 128 + N when stopped by signal N (after an orderly teardown).

Cheap to import: Mininet is imported only when a network is built.
"""
from __future__ import annotations

import os
import signal
import sys
from typing import TYPE_CHECKING, Any, Callable, cast

from testbed.journal import clean_stale, stale_journals
from testbed.links.base import BackendUnavailable

if TYPE_CHECKING:
    from testbed.net.running import RunningTestbed

__all__ = ["EXIT_OK", "EXIT_FAIL", "Terminated", "teardown_signals", "require_root", "startup_errors",
           "clean_stale_report", "run_testbed"]

EXIT_OK, EXIT_FAIL = 0, 1


class Terminated(SystemExit):
    """Raised in the main thread by SIGTERM/SIGHUP (and SIGINT where asked) so that every
    ``finally`` runs: the network is torn down and the journal emptied. A SystemExit, so
    that handlers which swallow everything else (Mininet's log handler re-raises only
    KeyboardInterrupt and SystemExit) let it through."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signum = signum

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


class teardown_signals:
    """Context manager: turn SIGTERM, SIGHUP (and SIGINT if ``sigint``) into Terminated,
    and ignore them while ``quiet()`` is in force (during teardown)."""

    SIGNALS = (signal.SIGTERM, signal.SIGHUP)

    def __init__(self, sigint: bool = True):
        self.signals = self.SIGNALS + ((signal.SIGINT,) if sigint else ())
        self._old: dict[int, Any] = {}
        self._owner = os.getpid()
        self.received = 0           # a signal that arrived during teardown (quiet()), or 0
        self._quiet = False

    def _raise(self, signum: int, _frame: Any) -> None:
        if os.getpid() != self._owner:
            # A fork()ed child (pyroute2 forks helpers for namespace work and stops them
            # with SIGTERM) inherits this handler; raising there would unwind the copied
            # stack and tear down the parent's network from the child. Die as by default.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise Terminated(signum)

    def __enter__(self) -> "teardown_signals":
        for s in self.signals:
            self._old[s] = signal.signal(s, self._raise)
        return self

    def quiet(self) -> None:
        """Teardown runs to its end: a signal now interrupts nothing but is remembered, so
        the exit status still says the run was stopped by it (:meth:`settle`). The signals
        are blocked, not handled, meanwhile: the commands teardown runs inherit the mask
        and so are not cut short by a Ctrl-C to the terminal's process group either."""
        quiet = self.signals + (signal.SIGINT,)
        for s in quiet:
            signal.signal(s, self._note)
        signal.pthread_sigmask(signal.SIG_BLOCK, quiet)
        self._quiet = True

    def settle(self) -> int:
        """After teardown: the first signal that arrived during it (0 if none)."""
        if not self._quiet:
            return self.received
        self._quiet = False
        quiet = self.signals + (signal.SIGINT,)
        pending = signal.sigpending()
        for s in quiet:
            if s in pending:
                signal.sigtimedwait([s], 0)     # consumed here, never delivered to a handler
                self.received = self.received or s
        signal.pthread_sigmask(signal.SIG_UNBLOCK, quiet)
        return self.received

    def _note(self, signum: int, _frame: Any) -> None:
        if os.getpid() == self._owner and not self.received:
            self.received = signum

    def __exit__(self, *exc: Any) -> None:
        self.settle()
        for s, h in self._old.items():
            signal.signal(s, h)
        signal.signal(signal.SIGINT, signal.default_int_handler)


def require_root(what: str) -> None:
    """Exit with status 1, saying why, unless running as root (``what``: the command, for the message)."""
    if os.geteuid() != 0:
        print(f"minimesh {what}: needs root (Mininet creates network namespaces); "
              f"run: sudo minimesh {what} ...", file=sys.stderr)
        raise SystemExit(EXIT_FAIL)


def startup_errors() -> tuple[type[BaseException], ...]:
    """Errors of building a network that are the user's to fix: reported in one line."""
    from testbed.net.hosts import NameTaken     # late: testbed.net.hosts imports Mininet
    return (BackendUnavailable, NameTaken)


def clean_stale_report(quiet_if_none: bool = True) -> int:
    """Remove what crashed runs left (by their journals); print a summary. Returns the
    number of items that could not be removed."""
    runs = len(stale_journals())
    count, errors = clean_stale()
    if runs or not quiet_if_none:
        print(f"*** clean: removed {count} journaled item{'s' if count != 1 else ''} "
              f"left by {runs} crashed run{'s' if runs != 1 else ''}", file=sys.stderr)
    for err in errors:
        print(f"*** clean: could not remove {err}", file=sys.stderr)
    return len(errors)


def run_testbed(what: str, topology: Any, backend: str, body: Callable[[RunningTestbed], int],
                sigint: bool = True) -> int:
    """Clean up after crashed runs, build the network, run ``body(testbed)`` and tear down on
    every exit path: normal end, exception, Ctrl-C, SIGTERM/SIGHUP (SIGINT too when
    ``sigint``; an interactive Mininet CLI keeps Ctrl-C for interrupting node commands).
    Returns body's exit status, 1 for a startup error or a failed cleanup, 128+N on signal N.
    ``what`` names the command in messages (``minimesh {what}: ...``)."""
    from testbed.net.network import Testbed     # late: Mininet, only when a network is built

    sig = teardown_signals(sigint=sigint)
    with sig:
        tb = None
        try:
            clean_stale_report()
            tb = Testbed(topology, link_backend=backend)
            tb.start()
            status = body(cast("RunningTestbed", tb))      # started: its net, control, journal are set
        except startup_errors() as e:
            print(f"minimesh {what}: {e}", file=sys.stderr)
            status = EXIT_FAIL
        except KeyboardInterrupt:
            print("\n*** interrupted: tearing down", file=sys.stderr)
            status = 128 + signal.SIGINT
        except Terminated as t:
            print(f"\n*** signal {signal.Signals(t.signum).name}: tearing down", file=sys.stderr)
            status = t.exit_status
        finally:
            sig.quiet()
            if tb is not None:
                errors = tb.stop()
                for err in errors:
                    print(f"*** cleanup: could not remove {err}", file=sys.stderr)
                if errors:
                    status = EXIT_FAIL
            if sig.settle() and status == EXIT_OK:
                # e.g. Ctrl-C while tearing down after the end of input: 130, not 0
                print(f"*** signal {signal.Signals(sig.received).name} during teardown", file=sys.stderr)
                status = 128 + sig.received
    return status
