"""`epp bench reliability`: how the daemon holds over time and under faults, in figures (docs/reliability.md).

One module per scenario (`soak`, `reloads`, `faults`, `failover`, `fuzz`, `slow_clients`), what they
share in `rig`, the command in `cli`.
"""
