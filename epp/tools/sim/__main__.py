"""`python -m epp.tools.sim` runs one simulated model server (same flags as `epp sim`)."""

from epp.tools.sim.cli import main

raise SystemExit(main())
