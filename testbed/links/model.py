"""netem's model of one link direction, sans-IO.

:class:`DirectionModel` takes frames in (``enqueue(frame, now)``) and hands frames out
(``pop_due(now)``); time is passed in by the caller (seconds, any monotonic origin) and
randomness comes from an injected :class:`random.Random`, so tests drive it with a fake
clock and a seed. It follows ``net/sched/sch_netem.c`` (``netem_enqueue``):

1. duplicate: with probability duplicate%, a copy is enqueued too (the copy goes through
   loss, corrupt and delay again, but is not duplicated again);
2. loss: with probability loss% (optionally correlated, netem's ``get_crandom``:
   ``u' = u * (1 - rho) + last * rho``) the packet is dropped;
3. corrupt: with probability corrupt%, one random bit is flipped;
4. queue limit: if ``queue_pkts`` packets are already held, tail drop;
5. reorder: with probability reorder% the packet skips the delay line (sent at once);
6. delay: ``delay +- jitter`` uniformly; packets are released in order of their send
   time (netem's tfifo), so jittered packets may overtake each other. The delay line is
   a FIFO for packets that arrive in send-time order (constant delay, rate: the common
   case, O(1) per packet) plus a heap for jittered ones and those that would overtake (a
   shorter delay set live); both hold ``(send_time, seq, frame)``, merged on release;
7. rate: with ``bw_mbit``, a packet's send time is
   ``max(now + delay, send time of the last queued packet) + wire_len * 8 / rate``.
"""
from __future__ import annotations

import heapq
import random
from collections import deque
from dataclasses import dataclass, fields
from typing import Callable

from testbed.links.frames import plain_corrupt
from testbed.shape import LinkShape

Corrupter = Callable[[bytes, random.Random], "bytes | None"]


@dataclass
class DirectionStats:
    received: int = 0      # frames offered to the link
    sent: int = 0          # frames handed out (duplicates included)
    lost: int = 0          # dropped by loss
    queue_drops: int = 0   # tail drops at the queue limit
    down_drops: int = 0    # dropped because the link was down
    duplicated: int = 0
    corrupted: int = 0
    reordered: int = 0

    def to_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class _CorrelatedRandom:
    """netem's simple correlated generator (get_crandom) on floats in [0, 1)."""

    def __init__(self, rng: random.Random, corr_pct: float = 0.0):
        self.rng = rng
        self.rho = corr_pct / 100.0
        self.last = rng.random()

    def __call__(self) -> float:
        u = self.rng.random()
        if self.rho:
            u = u * (1.0 - self.rho) + self.last * self.rho
            self.last = u
        return u


class DirectionModel:
    """One direction of a link: shape in force, the delay line, counters."""

    def __init__(self, shape: LinkShape | None = None, rng: random.Random | None = None,
                 corrupt: Corrupter = plain_corrupt, wire_len: Callable[[bytes], int] = len):
        self.rng = rng or random.Random()
        self._corrupt = corrupt
        self._wire_len = wire_len
        self.stats = DirectionStats()
        self._fifo: deque[tuple[float, int, bytes]] = deque()  # send-time order
        self._heap: list[tuple[float, int, bytes]] = []  # frames that overtook the FIFO's tail
        self._seq = 0
        self._last_tts = 0.0
        self.set_shape(shape or LinkShape())

    # --- configuration -------------------------------------------------------------

    @property
    def shape(self) -> LinkShape:
        return self._shape

    def set_shape(self, shape: LinkShape) -> None:
        """Change the shape live. Packets already in the delay line keep their send time,
        as with ``tc qdisc change ... netem``; new packets get the new shape."""
        old = getattr(self, "_shape", None)
        self._shape = shape
        self._delay = shape.delay_ms / 1000.0
        self._jitter = shape.jitter_ms / 1000.0
        self._loss = shape.loss_pct / 100.0
        self._dup = shape.duplicate_pct / 100.0
        self._reorder = shape.reorder_pct / 100.0
        self._corrupt_p = shape.corrupt_pct / 100.0
        self._byte_time = 8.0 / (shape.bw_mbit * 1e6) if shape.bw_mbit else 0.0
        self._limit = shape.queue_pkts
        if old is None or old.loss_corr_pct != shape.loss_corr_pct:
            self._loss_rand = _CorrelatedRandom(self.rng, shape.loss_corr_pct)
        # True when enqueue can hand the frame straight back (no decision to make)
        self.passthrough = shape.is_identity
        # constant delay, at most loss: the fate of a frame is "lost, or sent at now + delay"
        self._simple = shape == LinkShape(delay_ms=shape.delay_ms, loss_pct=shape.loss_pct,
                                          loss_corr_pct=shape.loss_corr_pct,
                                          queue_pkts=shape.queue_pkts)

    # --- data path -----------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._fifo) + len(self._heap)

    def enqueue(self, frame: bytes, now: float) -> list[bytes]:
        """Offer a frame at time ``now``; returns the frames to send immediately."""
        self.stats.received += 1
        fifo = self._fifo
        if self.passthrough and not fifo and not self._heap:
            self.stats.sent += 1
            return [frame]
        if self._simple:  # the common case, kept short: same outcome (and draws) as _enqueue
            tts = now + self._delay
            if not self._heap and (not fifo or tts >= fifo[-1][0]) and len(fifo) < self._limit:
                if self._loss and self._loss_rand() < self._loss:
                    self.stats.lost += 1
                    return []
                if tts <= now and not fifo:
                    self.stats.sent += 1
                    return [frame]
                if not fifo or tts > self._last_tts:
                    self._last_tts = tts
                self._seq += 1
                fifo.append((tts, self._seq, frame))
                return []
        out: list[bytes] = []
        self._enqueue(frame, now, True, out)
        self.stats.sent += len(out)
        return out

    def _enqueue(self, frame: bytes, now: float, may_duplicate: bool, out: list[bytes]) -> None:
        rng = self.rng
        count = 1
        if may_duplicate and self._dup and rng.random() < self._dup:
            count += 1
        if self._loss and self._loss_rand() < self._loss:
            count -= 1
            self.stats.lost += 1
        if count == 0:
            return
        if count > 1:
            self.stats.duplicated += 1
            self._enqueue(frame, now, False, out)
        if self._corrupt_p and rng.random() < self._corrupt_p:
            self.stats.corrupted += 1
            corrupted = self._corrupt(frame, rng)
            if corrupted is None:
                return
            frame = corrupted
        queued = len(self._fifo) + len(self._heap)
        if queued >= self._limit:
            self.stats.queue_drops += 1
            return
        if self._reorder and rng.random() < self._reorder:
            self.stats.reordered += 1
            out.append(frame)
            return
        tts = now + self._delay
        if self._jitter:
            tts += rng.uniform(-self._jitter, self._jitter)
        if self._byte_time:
            if queued and self._last_tts > tts:
                tts = self._last_tts
            tts += self._wire_len(frame) * self._byte_time
        if tts <= now and not queued:
            out.append(frame)
            return
        if not queued or tts > self._last_tts:
            self._last_tts = tts
        self._seq += 1
        fifo = self._fifo
        if not self._jitter and (not fifo or tts >= fifo[-1][0]):
            fifo.append((tts, self._seq, frame))
        else:
            heapq.heappush(self._heap, (tts, self._seq, frame))

    def next_deadline(self) -> float | None:
        """When the next queued frame is due, or None if nothing is queued."""
        fifo, heap = self._fifo, self._heap
        if fifo:
            return heap[0][0] if heap and heap[0] < fifo[0] else fifo[0][0]
        return heap[0][0] if heap else None

    def pop_due(self, now: float) -> list[bytes]:
        """Frames whose send time has come, in send-time order (ties: arrival order)."""
        fifo, heap = self._fifo, self._heap
        out: list[bytes] = []
        if not heap:
            while fifo and fifo[0][0] <= now:
                out.append(fifo.popleft()[2])
        else:
            while True:
                if fifo and fifo[0][0] <= now and not (heap and heap[0] < fifo[0]):
                    out.append(fifo.popleft()[2])
                elif heap and heap[0][0] <= now:
                    out.append(heapq.heappop(heap)[2])
                else:
                    break
        self.stats.sent += len(out)
        return out

    def flush(self) -> int:
        """Drop everything queued (the link went down). Returns how many."""
        n = len(self)
        self._fifo.clear()
        self._heap.clear()
        self.stats.down_drops += n
        return n
