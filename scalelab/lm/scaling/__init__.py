"""Scaling laws on top of the training loop: IsoFLOP sweeps (sweep.py), fits with intervals (fit.py, analysis.py),
a source with exact entropy (synthetic.py), the Kneser-Ney baseline (ngram.py), plots and report (plots.py), and
the planner (plan.py). Commands: `scalelab scaling`, `scalelab plan`."""
