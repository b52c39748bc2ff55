"""Prefect flows: thin wrappers over the stage functions in `metaad.stages`."""
