"""`python -m epp` runs the command-line interface."""

from epp.cli import main

raise SystemExit(main())
