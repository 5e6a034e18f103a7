"""Istio rules: YAML -> frozen values with file:line, Galley's analysis, and the security
policies' semantics. Pure (no I/O beyond reading the files ``analyze_files`` is given).

- :mod:`testbed.mesh.rules.yamldoc`: line-keeping YAML documents, the typed field
  ``Reader`` that turns schema problems into IST0106/MM0002 messages, header checks;
- :mod:`testbed.mesh.rules.traffic`: VirtualService and DestinationRule (``parse_rules``,
  ``parse_rule``, which hands the security kinds to ``security``);
- :mod:`testbed.mesh.rules.security`: PeerAuthentication and AuthorizationPolicy from YAML;
- :mod:`testbed.mesh.rules.policy`: those resources as values, and their evaluation (which
  mTLS mode a workload port has, whether a request is allowed);
- :mod:`testbed.mesh.rules.galley`: cross-resource checks against the services (``analyze``,
  the ``minimesh analyze`` command's ``analyze_files``).

May import testbed.mesh (model), proxy (the mTLS modes and workload identities of
proxy.tls.identity) and PyYAML; never etcd, citadel, pilot, deploy, testbed.run or testbed.cli.
Everything public is exported here (the package costs PyYAML and nothing heavier); modules
inside import each other by module path.
"""
from testbed.mesh.rules.galley import analyze, analyze_files, load_files, services_from_mesh, short_host
from testbed.mesh.rules.policy import (ALLOW, DENY, ROOT_NAMESPACE, AuthorizationPolicy, AuthzRequest, Condition,
                                       Operation, PeerAuthentication, Rule, Source, applicable, decide, from_json,
                                       peer_mode, to_json)
from testbed.mesh.rules.security import SecurityResource, parse_security, parse_security_resource
from testbed.mesh.rules.traffic import parse_rule, parse_rules
from testbed.mesh.rules.yamldoc import Reader, Y, load_documents, parse_duration_ms, read_documents

__all__ = [
    # YAML
    "Y", "Reader", "load_documents", "read_documents", "parse_duration_ms",
    # parsers
    "parse_rules", "parse_rule", "parse_security", "parse_security_resource", "SecurityResource",
    # Galley
    "analyze", "analyze_files", "load_files", "services_from_mesh", "short_host",
    # security policies
    "PeerAuthentication", "AuthorizationPolicy", "Rule", "Source", "Operation", "Condition", "AuthzRequest",
    "ALLOW", "DENY", "ROOT_NAMESPACE", "peer_mode", "applicable", "decide", "to_json", "from_json",
]
