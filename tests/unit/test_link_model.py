"""netem's model of one link direction, driven by a fake clock and a seeded RNG (no root)."""
import random

import pytest

from testbed.links.measure import binomial_bounds
from testbed.links.model import DirectionModel, _CorrelatedRandom
from testbed.shape import LinkShape

N = 4000


def run(model, n=N, gap_s=0.001, size=100, horizon_s=10.0):
    """Offer n distinct frames gap_s apart; return [(frame_index, send_time)] in send order."""
    out = []
    t = 0.0

    def drain(now):
        while model.next_deadline() is not None and model.next_deadline() <= now:
            due = model.next_deadline()
            out.extend((int.from_bytes(f[:4], "big"), due) for f in model.pop_due(due))

    for i in range(n):
        t = i * gap_s
        drain(t)
        frame = i.to_bytes(4, "big") + bytes(size - 4)
        out.extend((int.from_bytes(f[:4], "big"), t) for f in model.enqueue(frame, t))
    drain(t + horizon_s)
    return out


def model(seed=1, **shape):
    return DirectionModel(LinkShape(**shape), random.Random(seed))


def test_identity_passes_everything_at_once_in_order():
    out = run(model())
    assert [i for i, _ in out] == list(range(N))
    assert all(t == pytest.approx(i * 0.001) for i, t in out)


def test_delay_is_exact():
    out = run(model(delay_ms=25))
    assert [i for i, _ in out] == list(range(N))
    assert all(t == pytest.approx(i * 0.001 + 0.025, abs=1e-12) for i, t in out)


def test_jitter_stays_within_bounds_and_is_uniform_enough():
    out = run(model(delay_ms=20, jitter_ms=5))
    extra = [t - i * 0.001 for i, t in out]
    assert len(out) == N
    assert min(extra) >= 0.015 - 1e-12 and max(extra) <= 0.025 + 1e-12
    # uniform on [15, 25] ms: mean 20 ms, sd 2.89 ms; with 4000 draws the mean is within 0.15 ms
    assert sum(extra) / N == pytest.approx(0.020, abs=0.00015)
    assert max(extra) > 0.0249 and min(extra) < 0.0151


def test_jitter_reorders_as_netem_tfifo():
    out = run(model(delay_ms=20, jitter_ms=5))
    order = [i for i, _ in out]
    assert order != sorted(order)                         # overtaking happens
    times = [t for _, t in out]
    assert times == sorted(times)                         # released in send-time order


@pytest.mark.parametrize("loss", [1.0, 10.0, 50.0])
def test_loss_within_binomial_99_bounds(loss):
    m = model(seed=7, loss_pct=loss)
    out = run(m)
    lo, hi = binomial_bounds(N, loss / 100)
    assert lo <= N - len(out) <= hi
    assert m.stats.lost == N - len(out)


def test_loss_correlation_is_netems_recurrence():
    # netem's get_crandom: u' = u * (1 - rho) + last * rho, an AR(1) with lag-1 correlation rho
    gen = _CorrelatedRandom(random.Random(2), 50.0)
    xs = [gen() for _ in range(20000)]
    mean = sum(xs) / len(xs)
    var = sum((x - mean) ** 2 for x in xs) / len(xs)
    lag1 = sum((a - mean) * (b - mean) for a, b in zip(xs, xs[1:], strict=False)) / (len(xs) - 1) / var
    assert mean == pytest.approx(0.5, abs=0.01)
    assert lag1 == pytest.approx(0.5, abs=0.03)


def test_correlated_loss_lowers_the_rate_as_netem_does():
    # a known property of netem's simple correlation (faithfully reproduced, documented):
    # the smoothed value rarely falls below a small threshold, so fewer packets are lost
    lost = []
    for corr in (0, 25, 50):
        m = model(seed=3, loss_pct=20, loss_corr_pct=corr)
        lost.append(20000 - len(run(m, n=20000)))
    lo, hi = binomial_bounds(20000, 0.2)
    assert lo <= lost[0] <= hi
    assert lost[0] > lost[1] > lost[2] > 0


def test_duplicate():
    m = model(seed=5, duplicate_pct=10)
    out = run(m)
    lo, hi = binomial_bounds(N, 0.10)
    dups = len(out) - N
    assert lo <= dups <= hi and dups == m.stats.duplicated
    idx = [i for i, _ in out]
    assert set(idx) == set(range(N))


def test_reorder_sends_a_share_immediately():
    m = model(seed=9, delay_ms=10, reorder_pct=25)
    out = run(m)
    immediate = [i for i, t in out if t == pytest.approx(i * 0.001)]
    delayed = [i for i, t in out if t == pytest.approx(i * 0.001 + 0.010)]
    lo, hi = binomial_bounds(N, 0.25)
    assert lo <= len(immediate) <= hi and len(immediate) + len(delayed) == N
    order = [i for i, _ in out]
    assert order != sorted(order)


def test_corrupt_flips_exactly_one_bit():
    m = model(seed=11, corrupt_pct=20)
    frames = {}
    t = 0.0
    flipped = 0
    for i in range(N):
        f = i.to_bytes(4, "big") + bytes(60)
        (got,) = m.enqueue(f, t)
        diff = sum(bin(a ^ b).count("1") for a, b in zip(f, got, strict=True))
        assert diff in (0, 1)
        flipped += diff
        frames[i] = got
    lo, hi = binomial_bounds(N, 0.20)
    assert lo <= flipped <= hi and flipped == m.stats.corrupted


def test_rate_serialises_at_bw():
    # 1500-byte frames offered at 2x a 12 Mbit/s line: one leaves every 1 ms
    m = model(bw_mbit=12.0, queue_pkts=10_000)
    out = run(m, n=1000, gap_s=0.0005, size=1500)
    times = [t for _, t in out]
    assert len(out) == 1000
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert all(g == pytest.approx(0.001, rel=1e-9) for g in gaps)
    assert times[0] == pytest.approx(0.001)


def test_rate_after_delay_matches_netem():
    # an idle line: send time = arrival + delay + serialisation
    m = model(delay_ms=10, bw_mbit=8.0)
    (i, t), = run(m, n=1, size=1000)
    assert t == pytest.approx(0.010 + 0.001)


def test_queue_limit_tail_drops():
    m = model(bw_mbit=12.0, queue_pkts=50)
    out = run(m, n=1000, gap_s=0.0005, size=1500)
    # the line drains 1 frame/ms while 2 arrive: about half are dropped, never > 50 queued
    assert m.stats.queue_drops == 1000 - len(out)
    assert 450 <= m.stats.queue_drops <= 550
    assert [i for i, _ in out] == sorted(i for i, _ in out)


def test_queue_limit_counts_the_delay_line():
    # netem's limit also bounds packets waiting out their delay: 1000 pkt/s * 100 ms = 100 held
    m = model(delay_ms=100, queue_pkts=50)
    out = run(m, n=1000)
    assert m.stats.queue_drops > 0 and len(m) == 0
    assert len(out) + m.stats.queue_drops == 1000


def test_live_change_applies_to_new_packets_only():
    m = model(delay_ms=50)
    assert m.enqueue(b"a" * 10, 0.0) == []
    m.set_shape(LinkShape(delay_ms=5))
    assert m.enqueue(b"b" * 10, 0.001) == []
    assert m.next_deadline() == pytest.approx(0.006)
    assert m.pop_due(0.006) == [b"b" * 10]
    assert m.pop_due(0.050) == [b"a" * 10]


def test_live_change_to_identity_keeps_order_behind_queued():
    m = model(delay_ms=50)
    m.enqueue(b"a", 0.0)
    m.set_shape(LinkShape())
    # the delay line is not empty, so the new frame waits its (zero) turn
    assert m.enqueue(b"b", 0.001) == []
    assert m.pop_due(0.001) == [b"b"]
    assert m.pop_due(0.05) == [b"a"]


def test_flush_drops_queue():
    m = model(delay_ms=50)
    for k in range(5):
        m.enqueue(bytes([k]), 0.0)
    assert m.flush() == 5 and m.next_deadline() is None and m.stats.down_drops == 5


def test_same_seed_same_fate():
    a = run(model(seed=42, loss_pct=30, jitter_ms=3, delay_ms=5))
    b = run(model(seed=42, loss_pct=30, jitter_ms=3, delay_ms=5))
    assert a == b


def _mixed_run(coarse):
    """Frames offered 0.2 ms apart under live changes that keep arrival order (constant
    delay, rate) or overtake (jitter, a shorter delay); coarse: release with one pop_due(t)
    per arrival (as the emulator does), else at each exact deadline. [(time, frame index)]"""
    m = model(seed=3, queue_pkts=100_000)
    shapes = [LinkShape(delay_ms=50), LinkShape(delay_ms=5), LinkShape(delay_ms=20, jitter_ms=15),
              LinkShape(delay_ms=10, bw_mbit=1.0), LinkShape(), LinkShape(delay_ms=30)]
    rng = random.Random(5)
    sent = []

    def release(t):
        if coarse:
            sent.extend((t, int.from_bytes(f[:4], "big")) for f in m.pop_due(t))
            return
        while m.next_deadline() is not None and m.next_deadline() <= t:
            due = m.next_deadline()
            sent.extend((due, int.from_bytes(f[:4], "big")) for f in m.pop_due(due))

    for i in range(6000):
        if i % 250 == 0:
            m.set_shape(rng.choice(shapes).replace(queue_pkts=100_000))
        t = i * 0.0002
        release(t)
        sent.extend((t, int.from_bytes(f[:4], "big")) for f in m.enqueue(i.to_bytes(4, "big") + bytes(96), t))
    release(10.0)
    return sent


def test_release_order_is_send_time_order_across_live_changes():
    # every frame leaves once, in send-time order (netem's tfifo) whichever internal line
    # (FIFO or heap) held it, and a coarse release (several frames per pop_due) keeps it
    fine, coarse = _mixed_run(False), _mixed_run(True)
    assert sorted(i for _, i in fine) == list(range(6000))
    assert [d for d, _ in fine] == sorted(d for d, _ in fine)
    assert any(a > b for (_, a), (_, b) in zip(fine, fine[1:], strict=False))  # overtaking did happen
    assert [i for _, i in coarse] == [i for _, i in fine]


class _GeneralPathOnly(DirectionModel):
    """The model with its constant-delay shortcut switched off (reference for the test below)."""

    def set_shape(self, shape):
        super().set_shape(shape)
        self._simple = False


@pytest.mark.parametrize("shape", [dict(delay_ms=5), dict(delay_ms=5, loss_pct=30),
                                   dict(delay_ms=5, loss_pct=30, loss_corr_pct=50),
                                   dict(loss_pct=20), dict(delay_ms=100, queue_pkts=50)])
def test_constant_delay_shortcut_has_the_general_paths_outcome(shape):
    fast = DirectionModel(LinkShape(**shape), random.Random(11))
    slow = _GeneralPathOnly(LinkShape(**shape), random.Random(11))
    assert fast._simple
    assert run(fast) == run(slow)
    assert fast.stats == slow.stats
