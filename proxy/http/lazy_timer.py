"""A one-shot timer that is cheap to re-arm and to cancel, for timeouts that rarely fire.

The route timeout (15 s by default) is armed and cancelled once per request; with the
loop's ``call_later`` that is a new timer handle each time.  A :class:`LazyTimer` keeps one
loop timer across arms: ``arm`` records the deadline (and the callback), ``cancel`` forgets
the callback, and when the loop timer fires before the current deadline (the timer was
re-armed meanwhile) it re-schedules itself for the rest.  So a keep-alive connection
creates about one loop timer per timeout period, not one per request.
"""
from __future__ import annotations

__all__ = ["LazyTimer"]

# asyncio may run a timer up to its clock resolution early; a deadline within this is due
_SLACK_S = 0.001


class LazyTimer:
    __slots__ = ("loop", "callback", "deadline", "handle", "handle_at")

    def __init__(self, loop):
        self.loop = loop
        self.callback = None
        self.deadline = 0.0
        self.handle = None          # the loop timer, scheduled at handle_at
        self.handle_at = 0.0

    def arm(self, delay_s: float, callback) -> None:
        """Call ``callback()`` in ``delay_s`` unless cancelled or re-armed first."""
        self.callback = callback
        at = self.deadline = self.loop.time() + delay_s
        h = self.handle
        if h is not None:
            if self.handle_at <= at:
                return            # fires early, then re-schedules for the rest
            h.cancel()
        self.handle_at = at
        self.handle = self.loop.call_at(at, self._fire)

    def cancel(self) -> None:
        self.callback = None

    def close(self) -> None:
        """Cancel, and drop the loop timer too (the owner goes away)."""
        self.callback = None
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None

    def _fire(self) -> None:
        self.handle = None
        cb = self.callback
        if cb is None:
            return
        if self.loop.time() < self.deadline - _SLACK_S:
            self.handle_at = self.deadline
            self.handle = self.loop.call_at(self.deadline, self._fire)
            return
        self.callback = None
        cb()
