"""SKAB, the Skoltech Anomaly Benchmark (v0.9): a water-pump testbed, 8 sensors at 1 Hz.

Each labelled file is one run of one fault scenario; the scenario is the anomaly type:
``valve1`` (16 runs), ``valve2`` (4 runs) and ``other_1`` ... ``other_14`` (one run each:
leaks, rotor imbalance variants, water volume, cavitation, hot water; ``data/README.md``).
A run's ``anomaly`` column marks its faulty samples; the rest of the run is normal, as is
``anomaly-free.csv``. ``changepoint`` is dropped (it marks the labels' edges).

Every run is a series, so windows never cross runs; the anomaly-free recording is cut into
ten series of similar length so its normals can be dealt to train/val/test like the others.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from metaad.data.schema import LABEL, NORMAL, SERIES, TIMESTAMP, TYPE
from metaad.datasets.base import NORMALS_RANDOM, LoadedDataset, Protocol
from metaad.datasets.download import RemoteFile, locate
from metaad.errors import DataError

FOLDER = "skab"
_BASE = "https://raw.githubusercontent.com/waico/SKAB/b2c0d46c2971dcbfe71e26087b6d231998bb91c2"
_SHA: dict[str, str] = {
    "data/anomaly-free/anomaly-free.csv": (
        "7641a8742957100ef424dd97adfb3eeab27d4d180645fe2b3c49b7f7146ae9a6"
    ),
    "data/other/1.csv": "3beaf861bdfe9b4f4eff8e7567c1dd3f506fbd0ce667fc9399d04bd2dc70623d",
    "data/other/10.csv": "72683644f6f17689f619076a66a9ec02cbc0502bd669924c4c33951d1bdad9b0",
    "data/other/11.csv": "98a2fff3b6516205ae2e12f2dd30d7f08465fe4321a1bd5cf823396985ecb37b",
    "data/other/12.csv": "b0882efbcf2669223ae78bee61c9f10074a9b2375f0e86b8957ae5ce4aad1e72",
    "data/other/13.csv": "b3f1da02064d11234836a9fa1a2536bb0d3b6c6998ab60b0b71869b98e94d860",
    "data/other/14.csv": "c7f361e55397cc9efd4a76b6876111eda79b650d10aeb007342ca5972152eaef",
    "data/other/2.csv": "951c326bf36366fa7615b8f28d22f80b3878036069a690f42b3e223737a6a8d1",
    "data/other/3.csv": "f3c19a89f74f62a475c246b9263f161f7a734dd88304de803939cebaa55c7ebd",
    "data/other/4.csv": "56ca23f4eb61d1347d079eb9a35c60a59b8b64e160c00dd0c2ec69e0df0b2a4b",
    "data/other/5.csv": "7347b326df3a92c0810c69add0e5621939af7a1c1cb4755081d088e72d36920f",
    "data/other/6.csv": "eb8f05622a62c855040ea358b87be35fb1a4a3720ba0610569bab384db4b6e04",
    "data/other/7.csv": "1bee14f49bfc817ba2c335fb427baa71153d8f8ab52e72652f15f74e4b77daec",
    "data/other/8.csv": "12c138ed99c198e0a7ece886fe01bfd16bbdde206fad6c5d74322b6b9d6488d0",
    "data/other/9.csv": "11c4514b0bc706acff637fea6707ad9258ac878fe9dff3d0b11d2b618d94d8ea",
    "data/valve1/0.csv": "16af3f71313a23dd33d9b7b8065d836d05c3f9257588881cc7fbe07c076d9dc8",
    "data/valve1/1.csv": "fe4493bf805baef4e6dfb864094275d8cc2ea80a16b3735e2752b18b6aefd812",
    "data/valve1/10.csv": "ee16be8e4b870c779491e3d1dc9e0ecbfaf29eb013e032abff7a33f2cbbfe2ad",
    "data/valve1/11.csv": "89660fae4ed5c918db014409bbbc29f498fd99c7e956fab2620d18dea700a973",
    "data/valve1/12.csv": "90adfa9bc86d4556e6a4ce734436fd5685af79c189cd9828f8df75a7f468ce07",
    "data/valve1/13.csv": "d6cb6a97437215d3066a87e1fcc5fa4e68017629c043c5315920e3cf1060841c",
    "data/valve1/14.csv": "5f0bb9bc33c5e6c259263e32e25915c4d24c82b0a94554d48808626da05c1d71",
    "data/valve1/15.csv": "75cc86ab25d7091eee024739fa06d048753480d5d7d1507077231cab4f1b7a7e",
    "data/valve1/2.csv": "90492413469261886c8896c327241448df5da73fd7739cabfec8dd82de3c0ce4",
    "data/valve1/3.csv": "cb6afea108eddfd8447307e405f86bbb764b8d8e9130d7849a46e1303e19b8b2",
    "data/valve1/4.csv": "983aed9dc09991a57911091373c580e1b86d06aa983cd51678f108fd8d709654",
    "data/valve1/5.csv": "78974991ec87b7f9b9b6b2944f4b525468a9beb36c59b06cd7650d9a15eca14a",
    "data/valve1/6.csv": "97469c0e0c9c0e0ee5d30794f1f36c6785df5816a112a8b16c59637e8c894685",
    "data/valve1/7.csv": "ca2c9c6d6fa302c642acec6fbedac495bd12fececeee0a755d45a54e340e0f30",
    "data/valve1/8.csv": "0c4afb92248b5b35b4c9d734a91ed8318346901f04579074903730569e60416c",
    "data/valve1/9.csv": "2aa1ae1b2ff505caecda24802b877dc686924bbbeeb7e7db4faa261efb5ed5bd",
    "data/valve2/0.csv": "a6670e7a68c7c6ba62c649bd9d350633e80db624578e9529f2b736ced5e32bde",
    "data/valve2/1.csv": "b35d27f664eb0851ab73e5eb06633404c7eeaf532edff7e40c68eb9379f2012b",
    "data/valve2/2.csv": "2c3005cf28b88db715b7f4694e826ff252cba4dbb1eba679b040961f80477e60",
    "data/valve2/3.csv": "86927555d5c523e587d41500bd5dee4e2468289ec1b988ac17755aeae697d7f8",
}  # fmt: skip
FILES: tuple[RemoteFile, ...] = tuple(
    RemoteFile(rel, sha, f"{_BASE}/{rel}") for rel, sha in sorted(_SHA.items())
)
FEATURES: tuple[str, ...] = (
    "Accelerometer1RMS", "Accelerometer2RMS", "Current", "Pressure", "Temperature",
    "Thermocouple", "Voltage", "Volume Flow RateRMS",
)  # fmt: skip
#: Pieces the anomaly-free recording is cut into (each about the length of a fault run).
FREE_PIECES = 10


def scenario(relpath: str) -> str:
    """``data/other/5.csv`` -> ``other_5``; ``data/valve1/3.csv`` -> ``valve1``."""
    parts = Path(relpath).parts
    return f"other_{Path(parts[-1]).stem}" if parts[-2] == "other" else parts[-2]


def read_run(path: Path) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, sep=";")
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"cannot read {path} as a SKAB file: {exc}") from exc
    missing = [c for c in ("datetime", *FEATURES) if c not in df.columns]
    if missing:
        raise DataError(f"{path} lacks SKAB column(s) {missing}; columns: {list(df.columns)}")
    return df


def _part(raw: pd.DataFrame, series: str, kind: str | None) -> pd.DataFrame:
    f = raw[list(FEATURES)].astype(np.float64).reset_index(drop=True)
    f[TIMESTAMP] = pd.to_datetime(raw["datetime"]).astype("int64").to_numpy() // 10**9
    f[SERIES] = pd.Series([series] * len(f), dtype="str")
    if kind is None:
        y = np.zeros(len(f), np.int64)
    else:
        lab = pd.to_numeric(raw["anomaly"], errors="coerce")
        if lab.isna().any() or not lab.isin([0, 1]).all():
            raise DataError(f"SKAB run {series}: column 'anomaly' must be 0/1")
        y = lab.to_numpy().astype(np.int64)
    f[LABEL] = y
    f[TYPE] = pd.Series(np.where(y == 1, kind or NORMAL, NORMAL), dtype="str")
    return f


def load(
    path: str | Path | None = None,
    *,
    download: bool = False,
    check: bool = True,
    window: int = 5,
) -> LoadedDataset:
    """Read (or download) the 35 files; 5 scenarios held out, windows of ``window`` s."""
    base = locate(FOLDER, FILES, path=path, download=download, check=check)
    parts = []
    for f in FILES:
        raw = read_run(base / f.relpath)
        if "anomaly-free" in f.relpath:
            for i, piece in enumerate(np.array_split(np.arange(len(raw)), FREE_PIECES)):
                parts.append(_part(raw.iloc[piece], f"anomaly-free/{i}", None))
        else:
            rel = Path(f.relpath)
            parts.append(_part(raw, f"{rel.parts[-2]}/{rel.stem}", scenario(f.relpath)))
    df = pd.concat(parts, ignore_index=True)
    counts = df.loc[df[LABEL] == 1, TYPE].value_counts().sort_index().to_dict()
    protocol = Protocol(
        n_val_types=1,
        n_test_types=5,
        normals=NORMALS_RANDOM,
        window=window,
        stride=window,
        n_support_normal=50,
        n_query_normal=190,
        contamination=0.05,
        notes=(
            "Types are the 16 scenarios (valve1, valve2, other_1..other_14); 5 unseen and 1 "
            "meta-val type are drawn by the benchmark seed.",
            "Normal windows are dealt to train/val/test by run (series), 60/10/30; a run's "
            "faulty windows follow their scenario's split.",
            f"Non-overlapping windows of {window} s; support 50 normal windows + K, query 190 "
            "normal + 10 anomalous windows (5%).",
        ),
    )
    report = {
        "files": {f.relpath: f.sha256 for f in FILES},
        "rows": len(df),
        "anomalous_rows_per_scenario": {str(k): int(v) for k, v in counts.items()},
        "dropped_columns": {"changepoint": "marks the edges of the labels"},
    }
    return LoadedDataset(name="skab", table=df, protocol=protocol, report=report)


__all__ = ["FEATURES", "FILES", "load", "scenario"]
