"""The sans-IO HTTP/1.1 codec: parsing, framing, errors, and a hypothesis fuzz test."""
from hypothesis import given, settings, strategies as st

import pytest

from proxy.http.codec import (END, ClientCodec, Data, ProtocolError, RequestHead, ResponseHead, ServerCodec, get_header,
                         encode_chunk, encode_request_head, encode_response_head, LAST_CHUNK)


def test_pipelined_requests_and_chunked_body():
    ev = ServerCodec().receive_data(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
                                    b"POST /b HTTP/1.1\r\nHost: y\r\nTransfer-Encoding: chunked\r\n\r\n"
                                    b"5\r\nhello\r\n0\r\n\r\n")
    assert [type(e).__name__ for e in ev] == ["RequestHead", "EndOfMessage", "RequestHead", "Data", "EndOfMessage"]
    assert ev[0].target == b"/a" and ev[0].headers == [(b"host", b"x")] and ev[0].keep_alive
    assert ev[2].chunked and ev[3].data == b"hello"


def test_header_names_lowercased_and_split_input():
    c = ServerCodec()
    events = []
    for b in b"GET /p?q=1 HTTP/1.1\r\nHost: h\r\nX-Trace-ID: Ab\r\nContent-Length: 2\r\n\r\nhi":
        events += c.receive_data(bytes([b]))
    head = events[0]
    assert head.target == b"/p?q=1" and (b"x-trace-id", b"Ab") in head.headers and head.content_length == 2
    assert b"".join(e.data for e in events if type(e) is Data) == b"hi" and events[-1] is END


@pytest.mark.parametrize("raw,status", [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nX: " + b"a" * 70000 + b"\r\n\r\n", 431),
    (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
])
def test_malformed_requests_raise_protocol_error(raw, status):
    with pytest.raises(ProtocolError) as e:
        ServerCodec().receive_data(raw)
    assert e.value.status == status


def test_too_many_headers():
    raw = b"GET / HTTP/1.1\r\n" + b"".join(b"h%d: v\r\n" % i for i in range(101)) + b"\r\n"
    with pytest.raises(ProtocolError) as e:
        ServerCodec(max_headers=100).receive_data(raw)
    assert e.value.status == 431


def test_response_parsing_head_204_1xx_and_close_delimited():
    c = ClientCodec()
    c.expect_response(True)
    ev = c.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
    assert type(ev[0]) is ResponseHead and ev[0].content_length == 10 and ev[1] is END
    ev = c.receive_data(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n")
    assert [type(e) for e in ev] == [ResponseHead, type(END)] and ev[0].status == 204
    ev = c.receive_data(b"HTTP/1.1 200 OK\r\n\r\nabc")
    assert ev[0].keep_alive is False and ev[1].data == b"abc"
    assert c.feed_eof() == [END]


def test_encoders():
    assert encode_request_head(b"GET", b"/", [(b"host", b"h")]) == b"GET / HTTP/1.1\r\nhost: h\r\n\r\n"
    assert encode_response_head(404, []) == b"HTTP/1.1 404 Not Found\r\n\r\n"
    assert encode_chunk(b"x" * 17) == b"11\r\n" + b"x" * 17 + b"\r\n" and LAST_CHUNK == b"0\r\n\r\n"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_random_bytes_only_raise_protocol_error(data):
    c = ServerCodec(max_header_bytes=1024)
    try:
        for e in c.receive_data(data):
            assert type(e) in (RequestHead, Data, type(END))
    except ProtocolError as e:
        assert e.status in (400, 403, 426, 431, 501)


_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12)
_value = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789 ;=/.", max_size=30).map(str.strip)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_token, _value), max_size=10), st.lists(st.binary(min_size=1, max_size=50), max_size=5),
       st.integers(min_value=1, max_value=64))
def test_fuzz_roundtrip_chunked_request_any_split(headers, chunks, split):
    hs = [(k.encode(), v.encode()) for k, v in headers
          if k not in ("content-length", "transfer-encoding", "connection", "upgrade", "host")]
    raw = encode_request_head(b"POST", b"/x", hs + [(b"host", b"h"), (b"transfer-encoding", b"chunked")])
    raw += b"".join(encode_chunk(c) for c in chunks) + LAST_CHUNK
    c = ServerCodec()
    events = []
    for i in range(0, len(raw), split):
        events += c.receive_data(raw[i:i + split])
    assert events[0].headers[:len(hs)] == hs
    assert b"".join(e.data for e in events if type(e) is Data) == b"".join(chunks)
    assert events[-1] is END


# --- issue 14: what Envoy 1.40 answers (measured side by side; table in docs/proxy.md) -----------
H = b"Host: t.example\r\n"


@pytest.mark.parametrize("raw,status", [
    # points 3: an unsupported coding before chunked is 501, never dropped
    (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 501),
    (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n", 501),
    (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501),
    # point 4: odd request targets
    (b"GET http:// HTTP/1.1\r\n" + H + b"\r\n", 400),
    (b"GET http:/// HTTP/1.1\r\n" + H + b"\r\n", 400),
    (b"GET http://t.example:99999/ HTTP/1.1\r\n" + H + b"\r\n", 400),
    (b"GET http://t.example:-1/ HTTP/1.1\r\n" + H + b"\r\n", 400),
    (b"GET /a#frag HTTP/1.1\r\n" + H + b"\r\n", 400),
    (b"GET * HTTP/1.1\r\n" + H + b"\r\n", 400),
    (b"GET ftp://o.example/x HTTP/1.1\r\n" + H + b"\r\n", 400),
    (b"GET file:///etc/passwd HTTP/1.1\r\n" + H + b"\r\n", 400),
    (b"CONNECT / HTTP/1.1\r\n" + H + b"\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n" + H + b"Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n", 403),
    # point 5: HTTP/0.9 is answered at once, not left waiting
    (b"GET /\r\n", 426),
    # found by tests/reliability: Envoy refuses the coding before the version and the target
    (b"TRACE http://t.example:275/ HTTP/9.9\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n", 501),
    (b"DELETE http://t.example:8x/ HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    (b"GET / HTTP/1.0\r\n" + H + b"Transfer-Encoding: gzip\r\n\r\n", 501),
    # found by the 10,000-request fuzz (tests/reliability/test_reliability_proxy_fuzz.py)
    (b"POST http://\r\nHost: [::1]:80\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 400),
    (b"CONNECT o.example:443 HTTP/1.1\r\nHost: o.example\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501),
    (b"CONNECT o.example:443 HTTP/9.9\r\nHost: o.example\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501),
    (b"CONNECT o.example:443 HTTP/1.1\r\nHost: o.example\r\nContent-Length: 5\r\n\r\nhello", 400),
    (b"CONNECT * HTTP/1.1\r\n" + H + b"\r\n", 400),
    (b"CONNECT o.example HTTP/1.1\r\n" + H + b"\r\n", 400),
    (b"GET http://t.example:/ HTTP/1.1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x/y\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: [::1/\r\n\r\n", 400),
])
def test_envoy_refusals(raw, status):
    with pytest.raises(ProtocolError) as e:
        ServerCodec().receive_data(raw)
    assert e.value.status == status


@pytest.mark.parametrize("raw,target,host", [
    (b"GET / HTTP/1.1\nHost: x\n\n", b"/", b"x"),                                  # bare LF
    (b"GET / HTTP/1.1\r\nHost: x\n\r\n", b"/", b"x"),                              # mixed
    (b"GET\t/a HTTP/1.1\r\n" + H + b"\r\n", b"/a", b"t.example"),                  # tab in request line
    (b"GET /a\tHTTP/1.1\r\n" + H + b"\r\n", b"/a", b"t.example"),
    (b"OPTIONS * HTTP/1.1\r\n" + H + b"\r\n", b"*", b"t.example"),
    (b"GET http://u@t.example:8080/x HTTP/1.1\r\n\r\n", b"http://u@t.example:8080/x", None),
    (b"GET http://t.example:0/ HTTP/1.1\r\n\r\n", b"http://t.example:0/", None),               # port 0
    (b"GET http://t.example/ HTTP/1.1\r\nHost: a b\r\n\r\n", b"http://t.example/", b"a b"),  # replaced
    (b"GET / HTTP/1.1 \r\n" + H + b"\r\n", b"/", b"t.example"),                             # trailing SP
    (b"GET / HTTP/1.1\r\nHost: u@t.example\r\n\r\n", b"/", b"u@t.example"),
])
def test_envoy_lenient_heads_are_normalised(raw, target, host):
    ev = ServerCodec().receive_data(raw)
    assert ev[0].target == target and ev[0].http_version == "1.1" and ev[-1] is END
    assert get_header(ev[0].headers, b"host") == host


def test_obs_fold_becomes_one_space_and_pipelining_survives_the_slow_path():
    raw = (b"POST /1 HTTP/1.1\nHost: x\nX-A: a\n  b\nContent-Length: 5\n\nhello"
           b"GET /2 HTTP/1.1\r\nHost: y\r\n\r\n")
    for split in (len(raw), 7, 1):
        c, ev = ServerCodec(), []
        for i in range(0, len(raw), split):
            ev += c.receive_data(raw[i:i + split])
        heads = [e for e in ev if type(e) is RequestHead]
        assert [h.target for h in heads] == [b"/1", b"/2"], split
        assert get_header(heads[0].headers, b"x-a") == b"a b"
        assert b"".join(e.data for e in ev if type(e) is Data) == b"hello"


def test_chunk_size_with_trailing_space_is_taken():
    ev = ServerCodec().receive_data(b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
                                    b"5 \r\nhello\r\n0\r\n\r\n")
    assert b"".join(e.data for e in ev if type(e) is Data) == b"hello" and ev[-1] is END


def test_chunked_body_after_a_normalised_head():
    ev = ServerCodec().receive_data(b"POST / HTTP/1.1\nHost: x\nTransfer-Encoding: chunked\n\n"
                                    b"5\r\nhello\r\n0\r\n\r\nGET /n HTTP/1.1\r\nHost: x\r\n\r\n")
    assert [e.target for e in ev if type(e) is RequestHead] == [b"/", b"/n"]


def test_h2c_upgrade_is_stripped_and_its_body_parsed():
    """Found by the fuzz: llhttp took `Upgrade: h2c` + `Connection: Upgrade` as an upgrade
    and never parsed the body; Envoy strips an h2c upgrade and serves plain HTTP/1.1."""
    ev = ServerCodec().receive_data(b"PUT / HTTP/1.1\r\nHost: t\r\nUpgrade: h2c\r\nConnection: Upgrade, keep-alive\r\n"
                                    b"HTTP2-Settings: AAA\r\nContent-Length: 5\r\n\r\nhello"
                                    b"GET /2 HTTP/1.1\r\nHost: t\r\n\r\n")
    heads = [e for e in ev if type(e) is RequestHead]
    assert [h.target for h in heads] == [b"/", b"/2"]
    assert get_header(heads[0].headers, b"upgrade") is None and get_header(heads[0].headers, b"http2-settings") is None
    assert get_header(heads[0].headers, b"connection") == b"keep-alive"
    assert b"".join(e.data for e in ev if type(e) is Data) == b"hello"
    with pytest.raises(ProtocolError) as e:           # repeated: joined "h2c,h2c" is a real upgrade
        ServerCodec().receive_data(b"GET / HTTP/1.1\r\nHost: t\r\nUpgrade: h2c\r\nUpgrade: h2c\r\n"
                                   b"Connection: Upgrade\r\n\r\n")
    assert e.value.status == 403


def test_refused_upgrade_answers_100_continue_first():
    with pytest.raises(ProtocolError) as e:
        ServerCodec().receive_data(b"POST / HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"
                                   b"Expect: 100-continue\r\nContent-Length: 5\r\n\r\n")
    assert e.value.status == 403 and e.value.interim
