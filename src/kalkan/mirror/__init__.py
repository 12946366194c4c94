"""The static mirror (docs/mirror.md): the cached site written out as files with its links made
relative, for any static host or a mirror network when the edge itself is overwhelmed
(`export`), and a small server for such a directory (`serve`)."""
