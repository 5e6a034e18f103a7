"""Checkers: pure functions from history records to verdict dataclasses (``valid`` + numbers).
Definitions: docs/faults.md#checkers."""
from testbed.run.checkers.linearizability import (KeyResult, LinearizabilityVerdict, check_linearizability,
                                              check_register, pair_operations)
from testbed.run.checkers.requests import (AvailabilityVerdict, FailoverVerdict, StaleRoutingVerdict, WindowStat,
                                       check_availability, check_failover, check_removed_endpoint_routing,
                                       windows)
from testbed.run.checkers.split import SplitVerdict, VersionShare, check_split
from testbed.run.checkers.stale import StaleReadsVerdict, check_stale_reads

__all__ = ["check_availability", "check_failover", "check_removed_endpoint_routing", "check_split",
           "check_linearizability", "check_register", "check_stale_reads", "pair_operations", "windows",
           "AvailabilityVerdict", "FailoverVerdict", "StaleRoutingVerdict", "SplitVerdict", "VersionShare",
           "LinearizabilityVerdict", "KeyResult", "StaleReadsVerdict", "WindowStat"]
