"""The benchmarks (`epp bench ...`): scheduling quality against the rivals, the EPP's overhead per request
and per streamed token, and the micro-benchmarks of its hot paths (`python -m epp.tools.bench.<name>`)."""
