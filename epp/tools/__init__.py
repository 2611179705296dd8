"""The tools around the daemon, never imported by it: the model-server simulator (`epp sim`), the load
generator, the demo (`epp demo`), the benchmarks (`epp bench`), the Envoy config and process harness, and
the model-server metric pages they serve. Their extras (`pip install 'epp[bench]'`, `'epp[demo]'`) are
checked by `epp.tools.extras` before a command starts.
"""
