"""Everything that speaks Cypher: driver, schema, ingestion, change tracking, subgraph reads, write-back."""
