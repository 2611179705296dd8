"""`python -m epp.sim` runs one simulated model server (same flags as `epp sim`)."""

from epp.sim.cli import main

raise SystemExit(main())
