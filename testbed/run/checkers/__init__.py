"""Checkers: pure functions from history records to verdict dataclasses (``valid`` + the
numbers it rests on). Definitions: docs/faults.md#checkers.

- :mod:`~testbed.run.checkers.requests`: availability per window, failover, requests routed
  to an endpoint the registry had removed;
- :mod:`~testbed.run.checkers.split`: a traffic split against its configured weights;
- :mod:`~testbed.run.checkers.linearizability`: a register per key (the WGL search);
- :mod:`~testbed.run.checkers.stale`: stale reads;
- :mod:`~testbed.run.checkers.stats`: the statistics they need (Wilson, binomial, chi-square,
  percentiles), without SciPy.

May import testbed.history and the standard library only (no network, no processes).
Modules here import each other by module path, not through this package.
"""
from testbed.run.checkers.linearizability import (KeyResult, LinearizabilityVerdict, check_linearizability,
                                                  check_register, pair_operations)
from testbed.run.checkers.requests import (AvailabilityVerdict, FailoverVerdict, StaleRoutingVerdict, WindowStat,
                                           check_availability, check_failover, check_removed_endpoint_routing,
                                           windows)
from testbed.run.checkers.split import SplitVerdict, VersionShare, check_split
from testbed.run.checkers.stale import StaleReadsVerdict, check_stale_reads
from testbed.run.checkers.stats import binomial_two_sided, chi2_sf, percentile, wilson

__all__ = ["check_availability", "check_failover", "check_removed_endpoint_routing", "check_split",
           "check_linearizability", "check_register", "check_stale_reads", "pair_operations", "windows",
           "AvailabilityVerdict", "FailoverVerdict", "StaleRoutingVerdict", "SplitVerdict", "VersionShare",
           "LinearizabilityVerdict", "KeyResult", "StaleReadsVerdict", "WindowStat",
           "percentile", "wilson", "binomial_two_sided", "chi2_sf"]
