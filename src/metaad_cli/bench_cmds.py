"""`metaad datasets`, `import-dataset`, `benchmark`, `benchmark-merge`, `benchmark-compare`,
`adbench`.

Thin shells over :mod:`metaad.datasets`, :mod:`metaad.benchmark` and :mod:`metaad.adbench`:
they parse arguments, call one function and print a short summary.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from metaad.config import load_params, set_offline_env
from metaad.errors import ConfigError, MetaADError

PathOpt = Annotated[
    Path | None,
    typer.Option(
        "--path",
        help="A local copy: the dataset's folder or a folder above it (default: "
        "METAAD_DATA_DIR, ../shared/datasets, then the user cache).",
    ),
]
DownloadOpt = Annotated[
    bool,
    typer.Option(
        "--download/--no-download",
        help="Download the original files (sha256-checked) when no local copy is found.",
    ),
]


def _fail(exc: Exception) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def _logging() -> None:
    set_offline_env()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def datasets() -> None:
    """List the registered datasets."""
    from metaad.datasets import list_datasets

    for name, desc in list_datasets().items():
        typer.echo(f"{name:22s} {desc}")


def import_dataset(
    name: Annotated[str, typer.Argument(help="Registered dataset name (see `metaad datasets`).")],
    path: PathOpt = None,
    download: DownloadOpt = False,
    output: Annotated[
        Path, typer.Option(help="Where to write the canonical Parquet table.")
    ] = Path("data/table.parquet"),
    check: Annotated[
        bool, typer.Option("--check/--no-check", help="Verify every file's sha256.")
    ] = True,
    validate: Annotated[
        bool, typer.Option("--validate/--no-validate", help="Run the dataset's GX suite.")
    ] = True,
) -> None:
    """Load a real dataset into the canonical table (files checked, suite run, protocol shown)."""
    _logging()
    try:
        from metaad.datasets import load_dataset

        ds = load_dataset(name, path, download=download, check=check)
        if validate:
            from metaad.datasets.validation import validate_dataset_or_raise

            rep = validate_dataset_or_raise(ds, report_dir=output.parent / f"{name}_validation")
            typer.echo(f"validation passed: {rep.n_expectations} expectations")
        output.parent.mkdir(parents=True, exist_ok=True)
        ds.table.to_parquet(output, index=False)
        t = ds.table
        n_types = t.loc[t["label"] == 1, "anomaly_type"].nunique()
        typer.echo(
            f"wrote {output}: {len(t)} rows, {int(t['label'].sum())} anomalies, {n_types} types; "
            f"categorical: {list(ds.categorical) or 'none'}"
        )
        if ds.protocol is not None:
            for note in ds.protocol.notes:
                typer.echo(f"- {note}")
    except MetaADError as exc:
        _fail(exc)


def benchmark(
    params: Annotated[Path, typer.Option("--params", help="The params.yaml to read.")] = Path(
        "params.yaml"
    ),
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", "-S", help="Override, e.g. -S benchmark.seeds=[0,1]."),
    ] = None,
    dataset: Annotated[
        list[str] | None, typer.Option(help="Only this dataset (repeatable).")
    ] = None,
    method: Annotated[list[str] | None, typer.Option(help="Only this method (repeatable).")] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (benchmark.output).")] = None,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow store (default: the project's).")
    ] = None,
    mlflow: Annotated[bool, typer.Option("--mlflow/--no-mlflow", help="Log to MLflow.")] = True,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = False,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume/--no-resume",
            help="Continue a stopped run in --out: take back each (dataset, seed, method) "
            "it finished under the same settings instead of running it again.",
        ),
    ] = False,
) -> None:
    """The unseen-type benchmark: every method, K and seed on each dataset's frozen episodes."""
    _logging()
    try:
        from metaad.benchmark import run_benchmark, with_overrides
        from metaad.tracking import default_tracking_uri

        pairs = dict(s.split("=", 1) for s in (set_ or []) if "=" in s)
        cfg = with_overrides(load_params(params, pairs).benchmark, datasets=dataset, methods=method)
        uri = (tracking_uri or default_tracking_uri(Path("."))) if mlflow else None
        res = run_benchmark(
            cfg, out or Path(cfg.output), tracking_uri=uri, progress=progress, resume=resume
        )
        typer.echo(res.markdown)
        typer.echo(json.dumps({"verdict": res.results["verdict"], "mlflow_run": res.mlflow_run_id}))
    except MetaADError as exc:
        _fail(exc)


def benchmark_merge(
    runs: Annotated[
        list[Path], typer.Argument(help="Finished benchmark output folders (two or more).")
    ],
    out: Annotated[Path, typer.Option(help="Output folder of the merged report.")] = Path(
        "artifacts/benchmark/merged"
    ),
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow store (default: the project's).")
    ] = None,
    mlflow: Annotated[bool, typer.Option("--mlflow/--no-mlflow", help="Log to MLflow.")] = True,
    take: Annotated[
        list[str] | None,
        typer.Option(
            "--take",
            help="METHOD=RUN: a method two runs scored differently on purpose (e.g. other "
            "steps) counts with RUN's numbers (repeatable).",
        ),
    ] = None,
    rename: Annotated[
        list[str] | None,
        typer.Option(
            "--rename",
            help="RUN:METHOD=NAME: RUN's METHOD joins the report as NAME, beside the other "
            "runs' METHOD, e.g. metasgd at 3,000 steps as metasgd_3000; the meta-val pick "
            "then chooses among them (repeatable).",
        ),
    ] = None,
) -> None:
    """Merge benchmark runs of different methods on the same frozen episodes into one report."""
    _logging()
    try:
        from metaad.benchmark import merge_benchmarks
        from metaad.tracking import default_tracking_uri

        uri = (tracking_uri or default_tracking_uri(Path("."))) if mlflow else None
        chosen: dict[str, str] = {}
        for item in take or []:
            method, sep, run = item.partition("=")
            if not sep or not method or not run:
                raise ConfigError(f"--take {item!r}: expected METHOD=RUN, e.g. metasgd={runs[-1]}")
            chosen[method] = run
        renamed: dict[tuple[str, str], str] = {}
        for item in rename or []:
            left, sep, name = item.rpartition("=")
            run, colon, method = left.rpartition(":")
            if not sep or not colon or not run or not method or not name:
                raise ConfigError(
                    f"--rename {item!r}: expected RUN:METHOD=NAME, e.g. "
                    f"{runs[-1]}:metasgd=metasgd_3000"
                )
            if (run, method) in renamed:
                raise ConfigError(f"--rename {item!r}: {run}:{method} is renamed twice")
            renamed[(run, method)] = name
        res = merge_benchmarks(runs, out, tracking_uri=uri, take=chosen, rename=renamed)
        typer.echo(res.markdown)
        typer.echo(json.dumps({"verdict": res.results["verdict"], "mlflow_run": res.mlflow_run_id}))
    except MetaADError as exc:
        _fail(exc)


def benchmark_compare(
    run: Annotated[
        Path, typer.Argument(help="A benchmark's --out folder (or its per_episode.csv).")
    ],
    a: Annotated[str, typer.Option("--a", help="The reference method (subtracted).")],
    b: Annotated[str, typer.Option("--b", help="The method compared with it.")],
    k: Annotated[
        list[int] | None, typer.Option("--k", help="Only this K (repeatable; default all).")
    ] = None,
    dataset: Annotated[
        list[str] | None, typer.Option("--dataset", help="Only this dataset (repeatable).")
    ] = None,
    metric: Annotated[str, typer.Option(help="auprc, auroc or recall_at_1fpr.")] = "auprc",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON rows instead.")] = False,
    b_run: Annotated[
        Path | None,
        typer.Option(
            "--b-run",
            help="Take B from this other run (same frozen episodes, checked by sha256); "
            "then A and B may be the same method, e.g. with and without an option.",
        ),
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option(help="Also draw the differences with their intervals to this PNG."),
    ] = None,
    target: Annotated[
        float | None,
        typer.Option(help="With --plot: the margin a claim needs, drawn as a dashed line."),
    ] = None,
) -> None:
    """B minus A on the same frozen episodes, per dataset and K, with a paired 95% CI."""
    try:
        from metaad.benchmark_compare import (
            compare_methods,
            compare_runs,
            comparison_markdown,
            read_per_episode,
        )

        opts = {"shots": k or None, "metric": metric, "datasets": dataset}
        if b_run is None:
            table = compare_methods(read_per_episode(run), a, b, **opts)
            la, lb = a, b
        else:
            table = compare_runs(run, a, b_run, b, **opts)
            la, lb = f"{a} ({run.name})", f"{b} ({b_run.name})"
        if as_json:
            typer.echo(table.to_json(orient="records"))
        else:
            typer.echo(comparison_markdown(table, la, lb, metric))
        if plot is not None:
            from metaad.evaluation.plots import plot_paired_differences

            saved = plot_paired_differences(table, plot, a=la, b=lb, metric=metric, target=target)
            typer.echo(f"plot: {saved}", err=True)
    except MetaADError as exc:
        _fail(exc)


def adbench(
    set_name: Annotated[
        list[str] | None, typer.Option("--set", help="Only this set (repeatable).")
    ] = None,
    ratio: Annotated[
        list[float] | None, typer.Option(help="Labelled-anomaly ratio (repeatable).")
    ] = None,
    seed: Annotated[list[int] | None, typer.Option(help="Seed (repeatable).")] = None,
    method: Annotated[list[str] | None, typer.Option(help="Method (repeatable).")] = None,
    steps: Annotated[int | None, typer.Option(help="Meta-training steps.")] = None,
    params: Annotated[Path, typer.Option("--params")] = Path("params.yaml"),
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("artifacts/benchmark/adbench"),
    path: PathOpt = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume/--no-resume",
            help="Continue a stopped check in --out: take back the runs it finished.",
        ),
    ] = False,
) -> None:
    """ADBench's semi-supervised protocol, with the published numbers beside ours."""
    _logging()
    try:
        from metaad.adbench import adbench_markdown, run_adbench

        cfg = load_params(params).benchmark
        res = run_adbench(
            set_name or cfg.adbench_sets,
            ratios=ratio or cfg.adbench_ratios,
            seeds=seed or cfg.adbench_seeds,
            methods=method or cfg.adbench_methods,
            steps=cfg.adbench_steps if steps is None else steps,
            hparams=cfg.hparams,
            data_dir=path or cfg.data_dir,
            out_dir=out,
            device=cfg.device,
            resume=resume,
        )
        typer.echo(adbench_markdown(res))
    except MetaADError as exc:
        _fail(exc)


def register(app: typer.Typer) -> None:
    """Add the commands to the `metaad` app (called from metaad_cli.main)."""
    app.command("datasets")(datasets)
    app.command("import-dataset")(import_dataset)
    app.command("benchmark")(benchmark)
    app.command("benchmark-merge")(benchmark_merge)
    app.command("benchmark-compare")(benchmark_compare)
    app.command("adbench")(adbench)
