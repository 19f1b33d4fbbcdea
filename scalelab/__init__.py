"""scalelab: run, measure and use the story of modern machine learning on your own machine."""

__version__ = "0.1.0"
