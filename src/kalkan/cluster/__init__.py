"""Several edges of one site as one: what they share (standing decisions, the pass-signing keys,
the threat level, purges) and the Redis link that carries it. `state` is the sans-IO core (what
to send, what a message received changes); `redis_link` moves its messages in batches."""
