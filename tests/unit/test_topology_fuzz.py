"""Property: whatever YAML document it is given, parse_topology returns a Topology or
raises TopologyError with a line inside the document, never any other exception."""
from __future__ import annotations

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from testbed.topology.load import parse_topology
from testbed.topology.spec import Topology, TopologyError

KEYS = ["name", "hosts", "switches", "links", "ip_base", "h1", "h2", "s1", "ip", "mac", "between",
        "delay", "jitter", "loss", "bw", "queue", "forward", "reverse", "reorder", "x"]
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 2000), st.floats(-1, 200, allow_nan=False),
    st.sampled_from(["10ms", "1ms", "-3ms", "20Mbit", "0", "0.5%", "150%", "10.0.0.1/8", "10.0.0.1",
                     "00:00:00:00:00:01", "h1", "h2", "s1", "none", "1e3", "abc"]),
)
DOCS = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.sampled_from(KEYS), inner, max_size=5)),
    max_leaves=25,
)
# free-form documents: mostly structural errors
FREE = st.dictionaries(st.sampled_from(["name", "hosts", "switches", "links", "ip_base"]), DOCS,
                       max_size=5)
# documents shaped like topologies, with plausible and implausible values
NAMES = st.sampled_from(["h1", "h2", "h3", "s1", "s2", "x"])
VALUE = st.one_of(SCALARS, st.sampled_from(["5ms", "2ms", "100", "1%", "10Mbit", "0Mbit"]))
SHAPE = st.dictionaries(st.sampled_from(["delay", "jitter", "loss", "bw", "queue", "reorder"]), VALUE,
                        max_size=4)
HOST = st.one_of(st.none(), st.fixed_dictionaries({}, optional={
    "ip": st.sampled_from(["10.0.0.1", "10.0.0.2/8", "10.0.0.0/8", "10.0.0.3/24", "300.1.1.1"]),
    "mac": st.sampled_from(["00:00:00:00:00:01", "01:00:00:00:00:01", "zz"])}))
LINK = st.fixed_dictionaries({"between": st.lists(NAMES, min_size=1, max_size=3)}, optional={
    "delay": VALUE, "jitter": VALUE, "loss": VALUE, "bw": VALUE, "queue": VALUE,
    "forward": SHAPE, "reverse": SHAPE})
SHAPED = st.fixed_dictionaries(
    {"hosts": st.dictionaries(NAMES, HOST, min_size=1, max_size=4)},
    optional={"name": st.sampled_from(["t", "a b"]),
              "switches": st.dictionaries(NAMES, st.none(), max_size=2),
              "links": st.lists(LINK, max_size=5)})
TOP = st.one_of(FREE, SHAPED)


@settings(max_examples=300, deadline=None)
@given(TOP)
def test_only_topology_errors(doc) -> None:
    text = yaml.safe_dump(doc)
    try:
        t = parse_topology(text, "fuzz.yaml")
    except TopologyError as e:
        assert e.file == "fuzz.yaml"
        assert e.line is not None and 1 <= e.line <= text.count("\n") + 1, (str(e), text)
    else:
        assert isinstance(t, Topology)
        assert len({h.ip.split("/")[0] for h in t.hosts}) == len(t.hosts)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text(text: str) -> None:
    try:
        parse_topology(text, "t.yaml")
    except TopologyError as e:
        assert e.file == "t.yaml"
