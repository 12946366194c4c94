"""Socket-free unit tests (a package, so their module names may repeat integration ones)."""
