"""`metaad`: one command per pipeline stage, as `dvc.yaml` and people call them.

Every command reads `params.yaml` (``--params``), accepts dotted overrides
(``--set train.method=maml``) and works in the project root (``--root``). The logic lives
in `metaad.stages`; this file only parses arguments and prints short summaries.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from metaad.config import Params, load_params, set_offline_env
from metaad.errors import MetaADError

app = typer.Typer(
    help="Few-shot anomaly detection by meta-learning: pipeline stages.\n\n"
    "Typical order: ingest -> validate -> episodes -> train -> evaluate "
    "(or `dvc repro`, or the Prefect flow that chains them).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Obtain the DVC-tracked data/ folder.", no_args_is_help=True)
app.add_typer(data_app, name="data")

ParamsOpt = Annotated[Path, typer.Option("--params", help="The params.yaml to read.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set", "-S", help="Override a parameter, e.g. -S train.method=maml (repeatable)."
    ),
]
RootOpt = Annotated[
    Path, typer.Option("--root", help="Project root: data/ and artifacts/ live here.")
]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")]


def _setup(params: Path, overrides: list[str] | None) -> Params:
    set_offline_env()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    pairs = {}
    for item in overrides or []:
        if "=" not in item:
            raise typer.BadParameter(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        pairs[k.strip()] = v
    return load_params(params, pairs)


def _fail(exc: Exception) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


@app.command()
def ingest(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    root: RootOpt = Path("."),
    progress: ProgressOpt = True,
) -> None:
    """Write the canonical table (data/table.parquet) from the configured source.

    With `ingest.source: synthetic` the built-in generator writes `ingest.n_rows` rows of
    `ingest.domain` (card, sensor or network) deterministically from `ingest.seed`.
    """
    try:
        from metaad import stages

        p = _setup(params, set_)
        out = stages.ingest(p, root, progress=progress)
        typer.echo(f"wrote {out}")
    except MetaADError as exc:
        _fail(exc)


@app.command("import")
def import_(
    path: Annotated[Path, typer.Argument(help="CSV or Parquet file (or folder of parts).")],
    output: Annotated[
        Path, typer.Option(help="Where to write the canonical Parquet table.")
    ] = Path("data/table.parquet"),
    label_col: Annotated[str, typer.Option(help="Column holding the label.")] = "label",
    type_col: Annotated[
        str | None, typer.Option(help="Column naming the anomaly type (omit: one type).")
    ] = None,
    normal_value: Annotated[
        str | None, typer.Option(help="Value of the label column that means normal.")
    ] = None,
    categorical: Annotated[
        list[str] | None, typer.Option(help="A categorical feature column (repeatable).")
    ] = None,
    drop: Annotated[list[str] | None, typer.Option(help="A column to drop (repeatable).")] = None,
) -> None:
    """Turn any CSV/Parquet with a column mapping into the canonical table."""
    try:
        from metaad.data.importer import import_table

        set_offline_env()
        df = import_table(
            path,
            label_col=label_col,
            type_col=type_col,
            normal_value=normal_value,
            categorical=categorical or (),
            drop=drop or (),
        )
        output.parent.mkdir(parents=True, exist_ok=True)
        df.to_parquet(output, index=False)
        n_types = df.loc[df["label"] == 1, "anomaly_type"].nunique()
        typer.echo(
            f"wrote {output}: {len(df)} rows, {int(df['label'].sum())} anomalies, "
            f"{n_types} anomaly types"
        )
    except MetaADError as exc:
        _fail(exc)


@app.command()
def validate(
    params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, root: RootOpt = Path(".")
) -> None:
    """Run the Great Expectations gate on the canonical table.

    Writes artifacts/validation/report.json and Data Docs HTML; exits 1 with a list of
    each failed expectation, its column and sample values when the data is bad.
    """
    from metaad import stages
    from metaad.validation import ValidationFailed

    p = _setup(params, set_)
    try:
        rep = stages.validate(p, root)
        typer.echo(f"validation passed: {rep.n_expectations} expectations")
    except ValidationFailed as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(code=1) from exc
    except MetaADError as exc:
        _fail(exc)


@app.command()
def episodes(
    params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, root: RootOpt = Path(".")
) -> None:
    """Split anomaly types, fit preprocessing on meta-train rows, freeze evaluation episodes."""
    try:
        from metaad import stages

        p = _setup(params, set_)
        prep = stages.build_episodes(p, root)
        typer.echo(
            f"types: train {list(prep.split.train)}, val {list(prep.split.val)}, "
            f"test (unseen) {list(prep.split.test)}; {len(prep.episodes)} episodes"
        )
    except MetaADError as exc:
        _fail(exc)


@app.command()
def train(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    root: RootOpt = Path("."),
    progress: ProgressOpt = True,
    distributed: Annotated[
        bool,
        typer.Option(
            "--distributed/--no-distributed",
            help="Data-parallel training: torchrun, one process per GPU (gloo on CPU).",
        ),
    ] = False,
    nproc_per_node: Annotated[
        int, typer.Option(help="With --distributed: processes (0: one per GPU, else 2).")
    ] = 0,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume/--no-resume", help="With --distributed: continue from the last checkpoint."
        ),
    ] = True,
    checkpoint_every: Annotated[
        int | None,
        typer.Option(help="With --distributed: steps between checkpoints (default: params)."),
    ] = None,
) -> None:
    """Meta-train `train.method` (CUDA when present) and write artifacts/model."""
    if distributed:
        import subprocess

        from metaad.distributed import default_nproc, launch_command

        set_offline_env()
        cmd = launch_command(
            nproc_per_node or default_nproc(),
            params_path=params,
            overrides=set_ or [],
            root=root,
            resume=resume,
            checkpoint_every=checkpoint_every,
            progress=progress,
        )
        typer.echo(" ".join(cmd), err=True)
        raise typer.Exit(code=subprocess.run(cmd, check=False).returncode)
    try:
        from metaad import stages

        p = _setup(params, set_)
        res = stages.train(p, root, progress=progress)
        typer.echo(f"trained {p.train.method} in {res.seconds:.1f}s -> artifacts/model")
    except MetaADError as exc:
        _fail(exc)


@app.command()
def evaluate(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    root: RootOpt = Path("."),
    progress: ProgressOpt = True,
) -> None:
    """Score the trained model and every method in `evaluate.methods` on the frozen episodes."""
    try:
        from metaad import stages

        p = _setup(params, set_)
        res = stages.evaluate(p, root, progress=progress)
        typer.echo(res.markdown)
    except MetaADError as exc:
        _fail(exc)


@app.command()
def methods() -> None:
    """List every detector by name and family (metric, maml, baseline)."""
    from metaad.models.registry import list_methods

    for name, fam in list_methods().items():
        typer.echo(f"{name:12s} {fam}")


@data_app.command("pull")
def data_pull(
    params: ParamsOpt = Path("params.yaml"),
    root: RootOpt = Path("."),
    remote: Annotated[str | None, typer.Option(help="DVC remote to try.")] = None,
) -> None:
    """Get data/: `dvc pull` when a remote answers, else regenerate the synthetic default.

    The generator is byte-identical for the same params, so a regenerated data/ matches
    the md5 in data.dvc and `dvc status` stays clean.
    """
    try:
        from metaad.datafetch import pull_or_regenerate

        p = _setup(params, None)
        how = pull_or_regenerate(p, root, remote=remote)
        typer.echo(how)
    except MetaADError as exc:
        _fail(exc)


@app.command("show-params")
def show_params(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Print the resolved configuration (after overrides) as JSON."""
    try:
        p = _setup(params, set_)
        json.dump(p.to_dict(), sys.stdout, indent=1)
        typer.echo("")
    except MetaADError as exc:
        _fail(exc)


from metaad_cli.serve_cmds import register as _register_serve_cmds  # noqa: E402

_register_serve_cmds(app)  # `metaad types add|list`, `metaad score`

from metaad_cli.bench_cmds import register as _register_bench_cmds  # noqa: E402

_register_bench_cmds(app)  # `metaad datasets|import-dataset|benchmark|adbench`


if __name__ == "__main__":  # pragma: no cover
    app()
