"""metaad: few-shot anomaly detection by meta-learning.

The package is the pure core: plain functions and classes that the command line
(`metaad_cli`) and the Prefect flows (`flows/`) wrap. It imports neither Prefect nor Typer.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
