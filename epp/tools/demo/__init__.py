"""`epp demo` (what `make demo` runs): a simulated fleet, Envoy and the EPP on loopback, a shared-prefix
workload per profile, and a side-by-side table of requests per endpoint, hit ratio and TTFT.
"""

from epp.tools.demo.cli import main

__all__ = ["main"]
