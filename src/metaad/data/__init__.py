"""Canonical data: the table contract, the synthetic default, and importers."""
