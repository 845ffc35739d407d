"""Dataset ingest (NIH, COVID CSV, image folders), preprocessing into shards, loading."""
