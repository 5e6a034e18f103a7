"""Citadel, the mesh's certificate authority (Istio's istiod CA), and the identity faults.

- :mod:`testbed.mesh.citadel.ca`: the CA as a value (roots, issuing SPIFFE leaf
  certificates, revocation, root rotation);
- :mod:`testbed.mesh.citadel.store`: its state on disk, so a restarted CA keeps its roots;
- :mod:`testbed.mesh.citadel.server`: the CA over HTTP (``python -m testbed.mesh.citadel.server``);
- :mod:`testbed.mesh.citadel.envoy`: what real Envoy needs from it (file-based SDS, TLS
  context shapes Pilot puts on listeners and clusters);
- :mod:`testbed.mesh.citadel.faults`: the identity fault kinds (``cert-revoke``,
  ``cert-expire``, ``ca-root-rotate``, ``ca-stop``), registered with the fault model's
  registry when that module is imported.

May import testbed.mesh (model), rules, etcd, testbed.faults (to register its kinds),
proxy (workload identities, TLS material), cryptography and aiohttp; never pilot, deploy,
testbed.run or testbed.cli. The sidecar's side (its certificate rotator) lives in proxy/tls.

Exported here: the identity faults only (no cryptography, no aiohttp), so importing this
package registers their kinds and stays cheap for the fault model's users. ``ca``, ``store``,
``envoy`` and ``server`` load cryptography (and aiohttp); import them by module path, e.g.
``from testbed.mesh.citadel.ca import CertificateAuthority``.
"""
from testbed.mesh.citadel.faults import CAStop, CertExpire, CertRevoke, CitadelHTTP, RootRotate, citadel_curl_argv

__all__ = ["CertRevoke", "CertExpire", "RootRotate", "CAStop", "CitadelHTTP", "citadel_curl_argv"]
