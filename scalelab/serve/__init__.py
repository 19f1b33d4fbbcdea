"""scalelab.serve."""
