"""``envoy.transport_sockets.tls`` for minimesh-proxy: Envoy's TLS config, parsed strictly.

Listeners: :func:`pick_chain` reads ``listener_filters`` + ``filter_chains`` and returns the
chain whose network filter serves the listener plus a :class:`DownstreamTls` (or None):

* one chain with a ``DownstreamTlsContext`` -> STRICT;
* a chain matching ``transport_protocol: tls`` with a TLS context plus a plaintext chain with
  the same filters (Envoy's ``tls_inspector`` picks one) -> PERMISSIVE;
* one chain without a transport socket -> plaintext (DISABLE).

Clusters: :func:`parse_upstream` reads a cluster's ``transport_socket`` (``UpstreamTlsContext``).
Certificates come from SDS secrets (``tls_certificate_sds_secret_configs`` /
``validation_context_sds_secret_config``; the sidecar's Citadel rotator serves them, see
proxy/tls/sds.py) or from files (``tls_certificates`` / ``validation_context.trusted_ca``).
The peer's SPIFFE ID is checked against ``match_typed_subject_alt_names`` (URI, exact) or the
older ``match_subject_alt_names``.
"""
from __future__ import annotations

from dataclasses import dataclass

from proxy.config.reader import ConfigError, Obj, typed
from proxy.tls.identity import PERMISSIVE, STRICT

__all__ = ["TlsContextSpec", "DownstreamTls", "pick_chain", "parse_upstream", "TLS_SOCKET_NAMES"]

TLS_SOCKET_NAMES = ("envoy.transport_sockets.tls", "tls")
RAW_NAMES = ("envoy.transport_sockets.raw_buffer", "raw_buffer")
DOWNSTREAM_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
UPSTREAM_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
TLS_INSPECTOR = ("envoy.filters.listener.tls_inspector", "envoy.listener.tls_inspector")
TLS_VERSIONS = ("TLS_AUTO", "TLSv1_2", "TLSv1_3")


@dataclass(frozen=True)
class TlsContextSpec:
    """Where the certificate and trust bundle come from, and which peer SANs are accepted."""

    cert_secret: str = ""                      # SDS secret name ("default" in Istio), or ""
    ca_secret: str = ""                        # SDS secret name ("ROOTCA"), or ""
    cert_files: tuple[str, str] | None = None  # (certificate_chain, private_key) filenames
    ca_file: str = ""                          # validation_context.trusted_ca filename
    sans: tuple[str, ...] = ()                 # accepted peer URI SANs (empty: any SPIFFE ID)
    require_client_certificate: bool = True
    sni: str = ""


@dataclass(frozen=True)
class DownstreamTls:
    mode: str                                  # STRICT or PERMISSIVE
    context: TlsContextSpec


def _datasource(o: Obj, key: str) -> str:
    d = o.obj(key, required=True)
    assert d is not None
    name = d.take("filename", kind=str)
    d.done()
    return name


def _sds_name(o: Obj) -> str:
    name = o.take("name", kind=str)
    o.ignore("sds_config")        # the sidecar's Citadel rotator is the only SDS source
    o.done()
    return name


def _sans(v: Obj) -> tuple[str, ...]:
    out = []
    for m in v.objs("match_typed_subject_alt_names"):
        m.take("san_type", kind=str, choices=("URI",))
        out.append(_exact(m.obj("matcher", required=True)))
        m.done()
    for m in v.objs("match_subject_alt_names"):
        out.append(_exact(m))
    return tuple(out)


def _exact(m: Obj) -> str:
    value = m.take("exact", kind=str)
    m.ignore("ignore_case")
    m.done()
    if not value.startswith("spiffe://"):
        raise ConfigError(m.sub("exact"), f"SAN {value!r} is not a SPIFFE URI (spiffe://<td>/ns/<ns>/sa/<sa>)")
    return value


def _validation(v: Obj, spec: dict) -> None:
    spec["sans"] = spec.get("sans", ()) + _sans(v)
    if v.has("trusted_ca"):
        spec["ca_file"] = _datasource(v, "trusted_ca")
    v.ignore("crl", "only_verify_leaf_cert_crl")
    v.done()


def _common(c: Obj) -> dict:
    spec: dict = {}
    p = c.obj("tls_params")
    if p is not None:
        p.take("tls_minimum_protocol_version", "TLS_AUTO", str, TLS_VERSIONS)
        if p.take("tls_maximum_protocol_version", "TLSv1_3", str, TLS_VERSIONS) == "TLSv1_2":
            raise ConfigError(p.sub("tls_maximum_protocol_version"),
                              "minimesh-proxy speaks TLS 1.3 only; use TLSv1_3 or TLS_AUTO")
        p.ignore("cipher_suites", "ecdh_curves")
        p.done()
    alpn = c.strings("alpn_protocols")
    if alpn and "http/1.1" not in alpn:
        raise ConfigError(c.sub("alpn_protocols"), f"minimesh-proxy speaks http/1.1 only, got {list(alpn)}")
    which = c.one_of(("tls_certificates", "tls_certificate_sds_secret_configs"))
    certs = list(c.objs(which))
    if len(certs) != 1:
        raise ConfigError(c.sub(which), f"exactly one certificate is supported, got {len(certs)}")
    if which == "tls_certificates":
        spec["cert_files"] = (_datasource(certs[0], "certificate_chain"), _datasource(certs[0], "private_key"))
        certs[0].done()
    else:
        spec["cert_secret"] = _sds_name(certs[0])
    which = c.one_of(("validation_context", "validation_context_sds_secret_config",
                      "combined_validation_context"))
    if which == "validation_context":
        _validation(c.obj(which, required=True), spec)
    elif which == "validation_context_sds_secret_config":
        spec["ca_secret"] = _sds_name(c.obj(which, required=True))
    else:
        cv = c.obj(which, required=True)
        _validation(cv.obj("default_validation_context", required=True), spec)
        spec["ca_secret"] = _sds_name(cv.obj("validation_context_sds_secret_config", required=True))
        cv.done()
    c.done()
    if bool(spec.get("cert_secret")) != bool(spec.get("ca_secret")):
        raise ConfigError(c.path, "give both the certificate and the validation context via SDS, "
                          "or both via files (minimesh-proxy's SDS secrets come from one Citadel rotator)")
    return spec


def _transport_socket(o: Obj, downstream: bool) -> TlsContextSpec | None:
    ts = o.obj("transport_socket")
    if ts is None:
        return None
    name = ts.take("name", kind=str)
    if name in RAW_NAMES:
        ts.ignore("typed_config")
        ts.done()
        return None
    if name not in TLS_SOCKET_NAMES:
        raise ConfigError(ts.sub("name"), f"unsupported transport socket {name!r}; allowed: "
                          f"{', '.join(TLS_SOCKET_NAMES + RAW_NAMES)}")
    c = typed(ts, (), (DOWNSTREAM_TYPE,) if downstream else (UPSTREAM_TYPE,))
    ts.done()
    req = True
    sni = ""
    if downstream:
        req = c.take("require_client_certificate", False, bool)
        if not req:
            raise ConfigError(c.sub("require_client_certificate"),
                              "minimesh-proxy supports mutual TLS only; set require_client_certificate: true")
    else:
        sni = c.take("sni", "", str)
    c.ignore("session_timeout", "disable_stateless_session_resumption", "allow_renegotiation",
             "max_session_keys")
    common = c.obj("common_tls_context", required=True)
    assert common is not None
    spec = _common(common)
    c.done()
    return TlsContextSpec(require_client_certificate=req, sni=sni, **spec)


def parse_upstream(o: Obj) -> TlsContextSpec | None:
    """A cluster's ``transport_socket`` (None: plaintext)."""
    return _transport_socket(o, downstream=False)


def _is_tls_match(ch: Obj) -> bool | None:
    m = ch.obj("filter_chain_match")
    if m is None:
        return None
    proto = m.take("transport_protocol", "", str, ("", "tls", "raw_buffer"))
    m.ignore("application_protocols")
    m.done()
    return {"tls": True, "raw_buffer": False}.get(proto)


def pick_chain(listener: Obj, chains: list[Obj]) -> tuple[Obj, DownstreamTls | None]:
    """The chain to serve and the listener's TLS mode (see module docstring)."""
    for lf in listener.objs("listener_filters"):
        name = lf.take("name", kind=str)
        if name not in TLS_INSPECTOR:
            raise ConfigError(lf.sub("name"), f"unsupported listener filter {name!r}; allowed: "
                              f"{', '.join(TLS_INSPECTOR)}")
        lf.ignore("typed_config")
        lf.done()
    if len(chains) not in (1, 2):
        raise ConfigError(listener.sub("filter_chains"), "one filter chain (plaintext or TLS) or two "
                          f"(TLS + plaintext, PERMISSIVE) are supported, got {len(chains)}")
    parsed = []
    for ch in chains:
        match = _is_tls_match(ch)
        tls = _transport_socket(ch, downstream=True)
        if match is True and tls is None:
            raise ConfigError(ch.sub("transport_socket"), "chain matches transport_protocol tls "
                              "but has no TLS transport_socket")
        parsed.append((ch, tls))
    if len(parsed) == 1:
        ch, tls = parsed[0]
        return ch, (DownstreamTls(STRICT, tls) if tls is not None else None)
    tls_chains = [(ch, tls) for ch, tls in parsed if tls is not None]
    if len(tls_chains) != 1:
        raise ConfigError(listener.sub("filter_chains"), "with two filter chains one must be TLS and "
                          "the other plaintext (PERMISSIVE)")
    (tch, tch_tls), (pch, _) = tls_chains[0], next(p for p in parsed if p[1] is None)
    if tch.data.get("filters") != pch.data.get("filters"):
        raise ConfigError(pch.sub("filters"), "the TLS and plaintext chains must carry the same "
                          "network filters in minimesh-proxy")
    pch.take("filters")
    pch.ignore("name")
    pch.done()
    return tch, DownstreamTls(PERMISSIVE, tch_tls)
