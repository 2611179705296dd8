"""Active-active replicas (`--ha-mode active-active`): the peer link that carries the deciders' shared
state between replicas, its keys, and how replicas find each other. See docs/operations.md ("HA")."""
