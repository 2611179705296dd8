"""Several decision processes behind one ext_proc port, with one picture of the fleet (`--workers N`).

The pod-level process (`epp`) keeps everything that talks to the outside world once per pod (endpoint
source, scrape loops, config watching, leader election, health and metrics servers) and runs N worker
processes that serve ext_proc on the same port (SO_REUSEPORT). It publishes the fleet picture and the
config to them over `control`; the workers share their routing decisions with each other over
`statebus`. See docs/operations.md ("Workers").
"""
