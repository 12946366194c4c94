"""The demo newsroom site that the demo, the tests and the traffic lab protect."""
