"""The service registry on etcd, and etcd itself.

- :mod:`testbed.mesh.etcd.wire`: the JSON gateway's wire format and the members' log
  scanner, as pure functions (``range_request``, ``KV``, ``MemberStatus``, ``WatchError``,
  ``scan_log`` ...);
- :mod:`testbed.mesh.etcd.cluster`: members as data, their command lines, and the launcher
  (``EtcdCluster``, ``EtcdMember``, ``EtcdRunner``) with an injected ``spawn``;
- :mod:`testbed.mesh.etcd.client`: the async client (``EtcdClient``, ``Watch``, ``EtcdError``)
  with failover across members;
- :mod:`testbed.mesh.etcd.registry`: the registry's key layout, ``Registrar`` (an instance's
  lease and key) and ``Discovery`` (list + watch, for Pilot).

May import testbed.mesh (model) and aiohttp; never rules, citadel, pilot, deploy, testbed.run
or testbed.cli.

Exported here: the names of ``wire`` and ``cluster`` only (standard library). ``client`` and
``registry`` load aiohttp, which the launcher's users (the deployer, benchmarks) do not need:
import them by module path, e.g. ``from testbed.mesh.etcd.client import EtcdClient``.
"""
from testbed.mesh.etcd.cluster import (DEFAULT_ELECTION_MS, DEFAULT_HEARTBEAT_MS, EtcdCluster, EtcdMember,
                                      EtcdRunner, free_ports, http_probe, local_spawn, popen_probe)
from testbed.mesh.etcd.wire import (KV, LogEvent, MemberStatus, WatchCompacted, WatchError, WatchEvent,
                                   parse_watch_message, scan_log)

__all__ = ["EtcdCluster", "EtcdMember", "EtcdRunner", "local_spawn", "http_probe", "popen_probe", "free_ports",
           "DEFAULT_HEARTBEAT_MS", "DEFAULT_ELECTION_MS",
           "KV", "WatchEvent", "MemberStatus", "WatchError", "WatchCompacted", "parse_watch_message",
           "LogEvent", "scan_log"]
