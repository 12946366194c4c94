"""The e2e tests start the same real servers as the integration tests."""

from integration.conftest import make_edge, origin

__all__ = ["make_edge", "origin"]
