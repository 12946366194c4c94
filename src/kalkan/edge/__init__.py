"""The data plane: listener, request path, cache, store and origin pool."""
