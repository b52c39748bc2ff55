"""Type splits, preprocessing, windows and the episode (task) sampler."""
