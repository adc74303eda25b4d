"""The drift report: one self-contained HTML page per model (inline SVG, no external resource)."""
