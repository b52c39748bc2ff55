"""The `metaad` command line: a thin Typer shell over `metaad.stages`."""
