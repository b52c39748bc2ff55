"""`metaad types add|list` and `metaad score`: the type library and batch scoring.

Both work on registered model versions (``models:/metaad-detector@champion`` by default) in
the MLflow store of the project (``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else
``<root>/mlflow/mlflow.db``). The logic is in `metaad.typelib` and `metaad.scoring`; this
file parses arguments and prints short summaries.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from metaad.errors import MetaADError

types_app = typer.Typer(
    help="The served model's type library: the anomaly types it knows.", no_args_is_help=True
)

ParamsOpt = Annotated[Path, typer.Option("--params", help="The params.yaml to read.")]
RootOpt = Annotated[
    Path, typer.Option("--root", help="Project root: artifacts/ and mlflow/ live here.")
]
UriOpt = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        help="MLflow store (default: $MLFLOW_TRACKING_URI, else <root>/mlflow/mlflow.db).",
    ),
]
VersionOpt = Annotated[
    str | None, typer.Option("--version", help="Model version (default: the @champion).")
]


def _fail(exc: Exception) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def _setup(params: Path, root: Path, tracking_uri: str | None) -> tuple[object, str]:
    import logging

    from metaad.config import load_params, set_offline_env
    from metaad.tracking import default_tracking_uri

    set_offline_env()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    path = params if params.is_absolute() else root / params
    p = load_params(path if path.exists() else params)
    return p, tracking_uri or default_tracking_uri(root)


def _read_table(path: Path) -> object:
    import pandas as pd

    from metaad.errors import DataError

    if not path.exists():
        raise DataError(f"{path} does not exist")
    if path.suffix.lower() in (".parquet", ".pq") or path.is_dir():
        return pd.read_parquet(path)
    if path.suffix.lower() == ".csv":
        return pd.read_csv(path)
    raise DataError(f"{path}: expected a .csv or .parquet file")


@types_app.command("add")
def types_add(
    name: Annotated[str, typer.Option("--name", help="Name of the new anomaly type.")],
    examples: Annotated[
        Path,
        typer.Option(
            "--examples",
            help="CSV/Parquet with K labelled rows of the type: the model's feature columns; "
            "with a `label` column only label 1 rows count, with `anomaly_type` only NAME.",
        ),
    ],
    version: VersionOpt = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="Replace the examples of a type already known.")
    ] = False,
    params: ParamsOpt = Path("params.yaml"),
    root: RootOpt = Path("."),
    tracking_uri: UriOpt = None,
) -> None:
    """Add a type to the served model from K labelled rows, as a new gated model version.

    Nothing is retrained: the new version is the base version (default: the champion) plus
    the examples in its type library. It is registered as @challenger and becomes @champion
    only if the type-addition gate passes (it loads and predicts; weights unchanged; the
    type's examples are flagged, leave-one-out; the served AUPRC on the frozen episodes
    stays above the floors and does not fall by more than serve.max_type_regression).
    """
    try:
        from metaad.typelib import add_type

        p, uri = _setup(params, root, tracking_uri)
        frame = _read_table(examples)
        res = add_type(
            p,  # type: ignore[arg-type]
            root,
            name,
            frame,  # type: ignore[arg-type]
            version=version,
            tracking_uri=uri,
            replace=replace,
            source=str(examples),
        )
    except MetaADError as exc:
        _fail(exc)
        return
    verdict = "PROMOTED to @champion" if res.promoted else "NOT promoted"
    typer.echo(
        f"type {res.type_name!r} ({res.n_examples} examples) added to version "
        f"{res.base_version} -> version {res.version}: {verdict}"
    )
    for r in res.reasons:
        typer.echo(f"  {r}")
    typer.echo(f"champion: version {res.champion}")
    typer.echo(json.dumps({"version": res.version, "decision": res.decision_path}))


@types_app.command("list")
def types_list(
    version: VersionOpt = None,
    model: Annotated[
        str | None, typer.Option("--model", help="A model URI, e.g. models:/metaad-detector/3.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    params: ParamsOpt = Path("params.yaml"),
    root: RootOpt = Path("."),
    tracking_uri: UriOpt = None,
) -> None:
    """List the anomaly types a registered model version knows."""
    try:
        from metaad.scoring import model_uri_for
        from metaad.typelib import library_table, load_registered_bundle

        p, uri = _setup(params, root, tracking_uri)
        model_uri = model_uri_for(p.register.model_name, version, model)  # type: ignore[attr-defined]
        bundle, _ = load_registered_bundle(model_uri, uri)
    except MetaADError as exc:
        _fail(exc)
        return
    except Exception as exc:  # MLflow: no such model, version or alias
        _fail(exc)
        return
    table = library_table(bundle)
    if as_json:
        typer.echo(json.dumps({"model": model_uri, "types": table.to_dict("records")}, indent=1))
        return
    typer.echo(f"{model_uri}: {len(table)} known type(s), plus the normal profile")
    typer.echo(table.to_string(index=False))


def score(
    input_path: Annotated[
        Path, typer.Argument(help="A CSV/Parquet file, or a folder of them.", metavar="INPUT")
    ],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Scores file (.parquet/.csv); default beside INPUT."),
    ] = None,
    version: VersionOpt = None,
    model: Annotated[
        str | None, typer.Option("--model", help="A model URI (overrides --version).")
    ] = None,
    chunk_rows: Annotated[
        int | None, typer.Option("--chunk-rows", help="Rows per chunk (default serve.chunk_rows).")
    ] = None,
    id_col: Annotated[
        list[str] | None, typer.Option("--id-col", help="Input column copied to the output.")
    ] = None,
    support: Annotated[
        Path | None,
        typer.Option(
            "--support",
            help="Labelled rows to adapt to first (support_label column, or label + anomaly_type).",
        ),
    ] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
    params: ParamsOpt = Path("params.yaml"),
    root: RootOpt = Path("."),
    tracking_uri: UriOpt = None,
) -> None:
    """Score a file or folder with a registered model, chunk by chunk (no Prefect needed).

    Writes the scores with the input's ids (source_row, source_file for a folder, --id-col
    columns), plus <output>.summary.json and <output>.histogram.png.
    """
    try:
        from metaad.scoring import default_output, model_uri_for, score_files, support_from_frame
        from metaad.typelib import load_registered_bundle

        p, uri = _setup(params, root, tracking_uri)
        model_uri = model_uri_for(p.register.model_name, version, model)  # type: ignore[attr-defined]
        bundle, py = load_registered_bundle(model_uri, uri)
        sup = support_from_frame(_read_table(support)) if support else None  # type: ignore[arg-type]
        summary = score_files(
            bundle,
            input_path,
            output or default_output(input_path),
            chunk_rows=chunk_rows or p.serve.chunk_rows,  # type: ignore[attr-defined]
            scorer=py.scorer,
            id_columns=id_col or (),
            support=sup,
            model_label=model_uri,
            progress=progress,
        )
    except MetaADError as exc:
        _fail(exc)
        return
    typer.echo(
        f"scored {summary.rows_scored} rows ({summary.alerts} alerts, "
        f"{summary.rows_per_second:,.0f} rows/s) -> {summary.output}"
    )
    for t, n in sorted(summary.alerts_per_type.items(), key=lambda kv: -kv[1]):
        typer.echo(f"  {t}: {n}")
    typer.echo(json.dumps({"summary": summary.summary_json, "histogram": summary.histogram_png}))


def register(app: typer.Typer) -> None:
    """Attach `types` and `score` to the main `metaad` app."""
    app.add_typer(types_app, name="types")
    app.command("score")(score)


__all__ = ["register", "score", "types_app"]
