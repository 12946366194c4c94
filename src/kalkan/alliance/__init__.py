"""Newsrooms that defend together (docs/alliance.md): each edge's Ed25519 identity, the signed
feed of decisions it shares with its allies, and what it does with theirs. `feed` is the format
and its checks, without I/O."""
