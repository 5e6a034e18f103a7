"""Unit parsing and LinkShape validation (no root)."""
import pytest

from testbed.shape import LinkShape, ShapeError, parse_params, parse_rate_mbit, parse_time_ms


@pytest.mark.parametrize("text,ms", [("10ms", 10.0), ("1.5s", 1500.0), ("250us", 0.25), (7, 7.0), ("0ms", 0.0)])
def test_time_units(text, ms):
    assert parse_time_ms("delay", text) == pytest.approx(ms)


@pytest.mark.parametrize("text,mbit", [("20Mbit", 20.0), ("1gbit", 1000.0), ("500kbit", 0.5), (10, 10.0),
                                       ("1mbps", 8.0)])
def test_rate_units(text, mbit):
    assert parse_rate_mbit("bw", text) == pytest.approx(mbit)


@pytest.mark.parametrize("params,field", [
    ({"delay": "10 parsecs"}, "delay"), ({"delay": "-3ms"}, "delay"), ({"loss": "101%"}, "loss"),
    ({"bw": "fast"}, "bw"), ({"queue": 0}, "queue"), ({"colour": "red"}, "colour"),
    ({"delay": "1ms", "jitter": "2ms"}, "jitter"), ({"loss": True}, "loss"),
])
def test_bad_params_name_the_field(params, field):
    with pytest.raises(ShapeError) as e:
        parse_params(params)
    assert e.value.field == field
    assert str(e.value).startswith(field + ":")


def test_parse_params_keeps_base_and_removes_rate():
    base = parse_params({"delay": "10ms", "bw": "20Mbit"})
    changed = parse_params({"loss": "1%", "bw": "none"}, base)
    assert changed == LinkShape(delay_ms=10.0, loss_pct=1.0, bw_mbit=None)
    assert base.bw_mbit == 20.0


def test_identity_and_describe():
    assert LinkShape().is_identity
    assert LinkShape(queue_pkts=50).is_identity
    s = LinkShape(delay_ms=10, jitter_ms=1, loss_pct=0.5, bw_mbit=20)
    assert not s.is_identity
    assert s.describe() == "delay=10ms jitter=1ms loss=0.5% bw=20Mbit"


def test_zero_rate_is_an_error_not_unlimited():
    with pytest.raises(ShapeError) as e:
        parse_params({"bw": 0})
    assert e.value.field == "bw"


def test_reorder_needs_delay():
    with pytest.raises(ShapeError) as e:
        parse_params({"reorder": "5%"})
    assert e.value.field == "reorder"
    assert parse_params({"reorder": "5%", "delay": "10ms"}).reorder_pct == 5.0
