"""scalelab.tabular."""
