"""scalelab.lm.tasks."""
