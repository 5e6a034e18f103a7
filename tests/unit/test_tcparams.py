"""TCLink's parameters on minimesh's links (testbed.links.tcparams), with the fake backend:
how each parameter maps to the link shapes, per direction, live, and what is refused."""
import functools

import pytest
from mininet.link import Intf, TCIntf
from mininet.util import custom

from testbed.links.fake import FakeLink, FakeShapedIntf
from testbed.links.tcparams import (ShapedIntf, intf_classes, parse_tc_time_ms, tc_shape,
                                    wants_shaping)
from testbed.shape import LinkShape, ShapeError
from tests.support.mininet_nodes import FakeNode


def link(**params):
    return FakeLink(FakeNode("h1"), FakeNode("s1"), **params)


def test_simpleperf_parameters_shape_both_directions():
    lk = link(bw=10, delay="5ms", loss=10, use_htb=True)
    want = LinkShape(bw_mbit=10, delay_ms=5, loss_pct=10)
    assert lk.get_shapes() == (want, want)


def test_jitter_and_queue():
    s1, s2 = link(delay="10ms", jitter="2ms", max_queue_size=50).get_shapes()
    assert s1 == s2 == LinkShape(delay_ms=10, jitter_ms=2, queue_pkts=50)


def test_params1_and_params2_shape_one_direction_each_and_win_over_the_link():
    lk = link(delay="1ms", params1={"delay": "20ms"}, params2={"bw": 5})
    assert lk.get_shapes() == (LinkShape(delay_ms=20), LinkShape(delay_ms=1, bw_mbit=5))


def test_tc_time_units_as_tc_reads_them():
    assert parse_tc_time_ms("delay", "5ms") == 5
    assert parse_tc_time_ms("delay", "1.5s") == 1500
    assert parse_tc_time_ms("delay", "250us") == 0.25
    assert parse_tc_time_ms("delay", 10) == 0.01          # tc: a bare number is microseconds
    assert parse_tc_time_ms("delay", "2000") == 2.0
    with pytest.raises(ShapeError, match="delay: bad time '5 minutes'"):
        parse_tc_time_ms("delay", "5 minutes")


def test_loss_as_number_or_percent_string():
    assert tc_shape({"loss": "2.5%"}) == LinkShape(loss_pct=2.5)
    with pytest.raises(ShapeError, match="loss"):
        tc_shape({"loss": 150})


def test_no_shaping_parameter_is_none_and_use_htb_alone_shapes_nothing():
    assert tc_shape({}) is None
    assert tc_shape({"use_htb": True, "delay": None}) is None


@pytest.mark.parametrize("params, name", [
    ({"delya": "10ms"}, "delya"),                          # a typo is not swallowed
    ({"use_tbf": True}, "use_tbf"),
    ({"enable_ecn": True}, "enable_ecn"),
    ({"params1": {"speedup": 100}}, "params1: speedup"),
])
def test_unknown_or_unsupported_parameter_is_an_error_naming_it(params, name):
    with pytest.raises(ShapeError) as e:
        link(**params)
    assert str(e.value).startswith(f"{name}:")


def test_bad_values_name_the_parameter():
    with pytest.raises(ShapeError, match="^intf1 bw:"):
        link(bw="10M")
    with pytest.raises(ShapeError, match="^intf1 jitter:"):
        link(delay="1ms", jitter="5ms")              # netem would clamp; we refuse
    with pytest.raises(ShapeError, match="^intf1 max_queue_size:"):
        link(max_queue_size=0)


def test_shape_and_tclink_parameters_together_refused():
    with pytest.raises(ShapeError, match="shape1"):
        link(shape1=LinkShape(delay_ms=1), delay="2ms")


def test_intf_config_changes_the_live_link_like_tcintf():
    lk = link()
    assert isinstance(lk.intf1, FakeShapedIntf)
    lk.intf1.config(bw=10)
    assert lk.get_shapes() == (LinkShape(bw_mbit=10), LinkShape())
    lk.intf1.config(loss=50)                         # TCIntf: a config replaces the last one
    assert lk.get_shapes()[0] == LinkShape(loss_pct=50)
    lk.intf2.config(delay="15ms")
    assert lk.get_shapes() == (LinkShape(loss_pct=50), LinkShape(delay_ms=15))
    lk.intf1.config()                                # no shaping parameter: kept
    assert lk.intf1.shape() == LinkShape(loss_pct=50)
    with pytest.raises(ShapeError, match="h1-eth0: dealy"):
        lk.intf1.config(dealy="1ms")


def test_custom_shaping_intf_configures_itself_while_the_link_is_built():
    class Sub(FakeShapedIntf):
        pass
    lk = FakeLink(FakeNode("h1"), FakeNode("h2"), intf=custom(Sub, bw=7))
    assert lk.get_shapes() == (LinkShape(bw_mbit=7), LinkShape(bw_mbit=7))


def test_interface_classes_chosen():
    assert intf_classes(Intf, None, None) == (ShapedIntf, ShapedIntf)
    assert intf_classes(TCIntf, None, TCIntf) == (ShapedIntf, ShapedIntf)
    mine = functools.partial(FakeShapedIntf)
    assert intf_classes(None, mine, None) == (mine, ShapedIntf)


def test_wants_shaping_sees_through_custom_and_partial():
    assert wants_shaping(ShapedIntf)
    assert wants_shaping(custom(ShapedIntf, bw=10))
    assert wants_shaping(functools.partial(ShapedIntf, bw=10))
    assert not wants_shaping(Intf) and not wants_shaping(custom(Intf, mac="x"))
