"""Kalkan: a self-hosted edge that keeps small newsrooms online during DDoS attacks."""

__version__ = "0.1.0"
