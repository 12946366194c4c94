"""Kalkan's benchmarks: throughput against nginx and Varnish, and HTTP cache conformance.

Nothing here is shipped in the wheel. Every benchmark targets loopback only and bounds its own
run time; see ``bench/README.md``.
"""
