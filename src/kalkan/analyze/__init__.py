"""`kalkan analyze`: a forensic report from Kalkan's access logs (timeline by outcome, top
talkers, query shapes, clusters of clients that behave alike, what the mitigation did), read
with DuckDB and written as Markdown, PNG charts, a self-contained HTML page or JSON
(docs/analyze.md). Needs the `analyze` extra (duckdb, Pillow)."""
