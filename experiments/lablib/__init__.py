"""Helpers the lab scripts in experiments/ share (imported as ``lablib.X``: experiments/ is
on sys.path when a script runs, and tests/conftest.py adds it).

- :mod:`lablib.front_proxy`: the tutorial's front-proxy lab in pieces (the stand-in web
  site, dnsmasq, the proxy's command line, the tutorial's curl recorded in the history);
- :mod:`lablib.etcd`: move the etcd leader, members' log events into the history, etcd
  operations paired from the history;
- :mod:`lablib.mesh`: registry changes and Pilot's view of them, joined with xDS pushes and
  ACKs (experiments/etcd_leader_latency.py);
- :mod:`lablib.split`: the claims of experiments/registry_split_brain.py.

May import testbed.run (the runner's :class:`~testbed.run.experiment.Context`, checkers,
results) and every layer below it; never testbed.cli. Modules here import each other by
module path (``lablib.etcd``), not through this package.
"""
from lablib.etcd import etcd_log_events, etcd_ops, move_leader
from lablib.front_proxy import (CURL, ENVOY_V3_YAML, LISTEN, PROXIES, SEED_YAML, SITE, curl, curl_status,
                                dns_queries, envoy_binary, proxy_argv, proxy_config, read_web_log, run_on_pty,
                                start_dns, start_website, step, tshark_count)
from lablib.mesh import (PROBE_SERVICE, PilotWatcher, RegistryChanger, keep_etcd_logs, leaders_elected,
                         parse_listing, pilot_seen_latency, plot_pilot_latency, registry_mesh_spec, window_summary,
                         write_summary, xds_latency)
from lablib.split import (NO_RETRIES, Sides, etcd_claims, first_answer_after, outcome_counts, pilot_claims,
                          pilot_watcher, plot_sides, registry_claims, removal_windows, routing_claims,
                          stream_summary)

__all__ = [
    # etcd
    "move_leader", "etcd_log_events", "etcd_ops",
    # front proxy
    "SITE", "LISTEN", "CURL", "PROXIES", "SEED_YAML", "ENVOY_V3_YAML", "step", "proxy_argv", "proxy_config",
    "envoy_binary", "start_website", "start_dns", "run_on_pty", "curl_status", "curl", "read_web_log",
    "dns_queries", "tshark_count",
    # Pilot and the registry
    "RegistryChanger", "PilotWatcher", "pilot_seen_latency", "xds_latency", "window_summary", "write_summary",
    "leaders_elected", "registry_mesh_spec", "keep_etcd_logs", "plot_pilot_latency", "parse_listing",
    "PROBE_SERVICE",
    # registry split brain
    "Sides", "NO_RETRIES", "pilot_watcher", "outcome_counts", "removal_windows", "stream_summary",
    "first_answer_after", "etcd_claims", "registry_claims", "pilot_claims", "routing_claims", "plot_sides",
]
