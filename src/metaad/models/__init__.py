"""Detectors: meta-learners and baselines behind one contract, found by name."""
