"""Showing graphs and runs: SVG and Graphviz drawings, HTML reprs, progress bars, the
dashboard page."""
