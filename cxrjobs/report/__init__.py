"""Self-contained HTML reports comparing runs (the paper's Table 3 and figures)."""
