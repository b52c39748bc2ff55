"""Real-dataset loaders on the shared copies, the sha256 refusal, downloads, GX suites.

The copies live in ``../shared/datasets`` (or ``METAAD_DATA_DIR``) and are read from there,
never copied into the project; tests that need them are skipped, with the reason, when the
folder is absent. Damaged copies are written to ``tmp_path`` only.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from metaad.data.schema import LABEL, NORMAL, RESERVED, SERIES, SOURCE_SPLIT, TYPE, check_canonical
from metaad.datasets import (
    DATASETS,
    ChecksumMismatch,
    RemoteFile,
    fetch,
    list_datasets,
    load_dataset,
    locate,
    verify,
)
from metaad.datasets.download import candidate_roots
from metaad.errors import DataError

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("METAAD_DATA_DIR") or REPO.parent / "shared" / "datasets")
needs_data = pytest.mark.skipif(
    not (SHARED / "PROVENANCE.md").is_file(),
    reason=f"the shared dataset copies are not at {SHARED} (set METAAD_DATA_DIR to run these)",
)

#: Rows and anomalies of each canonical table, from PROVENANCE.md's counts (Sparkov: minus
#: the 193 frauds of customers without a legitimate row, which the loader removes).
EXPECTED: dict[str, tuple[int, int]] = {
    "nsl_kdd": (25_192 + 22_544, (25_192 - 13_449) + (22_544 - 9_711)),
    "tep": (500 + 960 + 21 * (480 + 960), 21 * (480 + 800)),
    "skab": (9_405 + 18_160 + 4_312 + 14_929, 6_309 + 1_517 + 5_241),
    "sparkov": (14_446 - 193, 1_845 - 193),
    "paysim": (51_392, 1_392),
    "ulb": (984, 492),
    "backdoor": (95_329, 2_329),
    "adbench_annthyroid": (7_200, 534),
    "adbench_campaign": (41_188, 4_640),
    "adbench_cardio": (1_831, 176),
    "adbench_donors": (619_326, 36_710),
    "adbench_mammography": (11_183, 260),
    "adbench_pendigits": (6_870, 156),
    "adbench_satellite": (6_435, 2_036),
    "adbench_shuttle": (49_097, 3_511),
    "adbench_thyroid": (3_772, 93),
    "adbench_WBC": (223, 10),
}


@pytest.fixture(scope="module")
def loaded() -> dict[str, object]:
    """Every registered dataset, loaded once for the module (checksums verified)."""
    if not (SHARED / "PROVENANCE.md").is_file():
        pytest.skip(f"the shared dataset copies are not at {SHARED}")
    return {name: load_dataset(name, SHARED) for name in DATASETS}


def test_registry_lists_every_loader_and_refuses_unknown_names() -> None:
    assert set(EXPECTED) == set(DATASETS) == set(list_datasets())
    with pytest.raises(Exception, match="valid datasets: nsl_kdd"):
        load_dataset("nslkdd")


@needs_data
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_loader_gives_the_canonical_table_with_the_published_counts(
    loaded: dict[str, object], name: str
) -> None:
    ds = loaded[name]
    t = ds.table
    check_canonical(t, categorical=ds.categorical)
    rows, anomalies = EXPECTED[name]
    assert (len(t), int(t[LABEL].sum())) == (rows, anomalies)
    assert (t.loc[t[LABEL] == 0, TYPE] == NORMAL).all()
    # every recorded file digest is one PROVENANCE.md lists
    provenance = (SHARED / "PROVENANCE.md").read_text()
    for digest in ds.report["files"].values():
        assert digest in provenance


@needs_data
def test_nsl_kdd_unseen_split_is_the_18_test_only_types(loaded: dict[str, object]) -> None:
    ds = loaded["nsl_kdd"]
    rep = ds.report
    assert rep["test_only_types"] == sorted(
        [
            "apache2",
            "httptunnel",
            "mailbomb",
            "mscan",
            "named",
            "perl",
            "processtable",
            "ps",
            "saint",
            "sendmail",
            "snmpgetattack",
            "snmpguess",
            "sqlattack",
            "udpstorm",
            "worm",
            "xlock",
            "xsnoop",
            "xterm",
        ]
    )
    assert len(rep["train_types"]) == 21
    p = ds.protocol
    assert set(p.test_types) == set(rep["test_only_types"])
    assert not set(p.test_types) & (set(p.train_types) | set(p.val_types))
    assert p.normals == "source"
    assert "difficulty" not in ds.table.columns and SOURCE_SPLIT in ds.table.columns
    # categories come along for reports, never as a feature column
    assert ds.type_groups["mscan"] == "Probe" and ds.type_groups["neptune"] == "DoS"
    assert "category" not in ds.table.columns
    # the duplicates trap (CALIBRATION.md): a third of snmpgetattack copies a normal row
    dup = rep["duplicates_of_normals"]["snmpgetattack"]
    assert dup["rows"] == 178 and dup["copies_of_a_normal"] == 58
    assert dup["fraction"] == pytest.approx(0.326, abs=1e-3)


@needs_data
def test_tep_onset_segments_and_time_matched_normals(loaded: dict[str, object]) -> None:
    ds = loaded["tep"]
    t = ds.table
    assert sorted(t.loc[t[LABEL] == 1, TYPE].unique()) == [f"IDV{i:02d}" for i in range(1, 22)]
    # a test run: samples 0-159 normal in their own series, 160-959 the fault in another
    pre, post = t[t[SERIES] == "d05_te/pre"], t[t[SERIES] == "d05_te/post"]
    assert len(pre) == 160 and (pre[LABEL] == 0).all() and pre["timestamp"].max() == 159
    assert len(post) == 800 and (post[TYPE] == "IDV05").all() and post["timestamp"].min() == 160
    # no series mixes normal and faulty samples, so no window can straddle the onset
    mixed = t.groupby(SERIES)[LABEL].nunique()
    assert (mixed == 1).all()
    # evaluation normals are the normal test run's post-onset hours only
    test_normals = t[(t[SOURCE_SPLIT] == "test") & (t[LABEL] == 0)]
    assert set(test_normals[SERIES]) == {"d00_te/post"} and len(test_normals) == 800
    # d00.dat is stored transposed; turned, its first sample is the file's first column
    raw = np.loadtxt(SHARED / "tep" / "d00.dat")
    d00 = t[t[SERIES] == "d00"].sort_values("timestamp")
    np.testing.assert_allclose(d00.iloc[0, :52].to_numpy(float), raw[:, 0])
    assert ds.protocol.window == ds.protocol.stride  # non-overlapping windows


@needs_data
def test_skab_scenarios_are_the_types(loaded: dict[str, object]) -> None:
    ds = loaded["skab"]
    counts = ds.table.loc[ds.table[LABEL] == 1, TYPE].value_counts().to_dict()
    assert counts["valve1"] == 6309 and counts["valve2"] == 1517
    assert counts["other_1"] == 188 and counts["other_10"] == 586
    assert len(counts) == 16
    assert "changepoint" not in ds.table.columns
    assert ds.table.groupby(SERIES).size().max() < 2000  # runs, and the cut anomaly-free file


@needs_data
def test_sparkov_keeps_the_label_leaks_out_of_the_features(loaded: dict[str, object]) -> None:
    ds = loaded["sparkov"]
    cols = set(ds.table.columns) - set(RESERVED)
    for leak in ("trans_date_trans_time", "category", "dob", "trans_num", "merchant"):
        assert leak not in cols
    assert cols == {"amt", "lat", "long", "city_pop", "merch_lat", "merch_long", "birth_year",
                    "state"}  # fmt: skip
    assert ds.report["removed"]["fraud_rows_of_customers_without_legit_rows"] == 193
    types = ds.table.loc[ds.table[LABEL] == 1, TYPE].value_counts()
    assert len(types) == 14 and types["grocery_pos"] > types["travel"]
    # what remains cannot re-identify a fraud-only customer: every fraud's customer has a
    # legitimate row in the table
    key = ["lat", "long", "birth_year"]
    legit = set(map(tuple, ds.table.loc[ds.table[LABEL] == 0, key].to_numpy().tolist()))
    frauds = map(tuple, ds.table.loc[ds.table[LABEL] == 1, key].to_numpy().tolist())
    assert all(f in legit for f in frauds)


@needs_data
def test_binary_sets_have_no_protocol(loaded: dict[str, object]) -> None:
    for name in ("ulb", "backdoor", "adbench_WBC"):
        assert loaded[name].protocol is None
    assert loaded["paysim"].protocol.test_types == ("TRANSFER",)


# -- checksums and downloads -------------------------------------------------------------
def _copy_dataset_file(tmp_path: Path, folder: str, rel: str) -> Path:
    dst = tmp_path / folder / rel
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(SHARED / folder / rel, dst)
    return dst


@needs_data
def test_a_file_whose_checksum_differs_is_refused_naming_file_and_digests(tmp_path: Path) -> None:
    f = _copy_dataset_file(tmp_path, "adbench", "42_WBC.npz")
    assert load_dataset("adbench_WBC", tmp_path).table.shape == (223, 11)  # intact copy loads
    data = bytearray(f.read_bytes())
    data[-10] ^= 0xFF
    f.write_bytes(bytes(data))
    actual = hashlib.sha256(bytes(data)).hexdigest()
    expected = DATASETS["adbench_WBC"].files[0].sha256
    with pytest.raises(ChecksumMismatch) as info:
        load_dataset("adbench_WBC", tmp_path)
    msg = str(info.value)
    assert str(f) in msg and expected in msg and actual in msg
    assert info.value.expected == expected and info.value.actual == actual


def test_verify_and_fetch_from_a_file_url(tmp_path: Path) -> None:
    src = tmp_path / "mirror" / "part.csv"
    src.parent.mkdir()
    src.write_bytes(b"a,b\n1,2\n")
    good = hashlib.sha256(src.read_bytes()).hexdigest()
    assert verify(src, good) == src
    dest = tmp_path / "cache" / "part.csv"
    assert fetch(src.as_uri(), dest, good).read_bytes() == src.read_bytes()
    # a wrong digest: refused, naming both digests, and nothing left under the final name
    dest2 = tmp_path / "cache" / "other.csv"
    with pytest.raises(ChecksumMismatch, match=good):
        fetch(src.as_uri(), dest2, "0" * 64)
    assert not dest2.exists() and not list(dest2.parent.glob(".other.csv.*"))
    with pytest.raises(DataError, match="could not download"):
        fetch((tmp_path / "missing.csv").as_uri(), tmp_path / "x.csv", good)


def test_locate_downloads_into_the_cache_only_when_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "one.txt").write_bytes(b"1\n")
    files = (
        RemoteFile(
            "sub/one.txt", hashlib.sha256(b"1\n").hexdigest(), (mirror / "one.txt").as_uri()
        ),
    )
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("METAAD_DATA_DIR", raising=False)
    with pytest.raises(DataError, match="--download"):
        locate("toyset", files, path=tmp_path / "nowhere")
    base = locate("toyset", files, download=True)
    assert base == tmp_path / "cache" / "metaad" / "datasets" / "toyset"
    assert (base / "sub" / "one.txt").read_bytes() == b"1\n"
    # the second call finds the verified cached copy and downloads nothing
    (mirror / "one.txt").unlink()
    assert locate("toyset", files, download=True) == base
    assert candidate_roots(tmp_path)[0] == tmp_path


# -- Great Expectations suites ---------------------------------------------------------------
@needs_data
def test_each_dataset_suite_passes_on_the_verified_copy(loaded: dict[str, object]) -> None:
    from metaad.datasets.validation import dataset_profile, reference, validate_dataset

    for name, ds in loaded.items():
        rep = validate_dataset(ds)
        assert rep.success, f"{name}: {rep.summary()}"
        assert rep.n_expectations > 10
        # the stored reference is what the verified copy gives today (regenerated, not edited)
        stored, now = reference(name), dataset_profile(ds)
        assert stored["n_rows"] == now["n_rows"] and stored["numeric"] == now["numeric"]


def _damaged_nsl_kdd(tmp: Path) -> Path:
    for rel in ("KDDTrain+_20Percent.txt", "KDDTest+.txt"):
        _copy_dataset_file(tmp, "nsl_kdd", rel)
    f = tmp / "nsl_kdd" / "KDDTest+.txt"
    df = pd.read_csv(f, header=None)
    df.loc[3, 4] = df[4].max() * 10  # src_bytes of one row blown up (a unit change, say)
    df.loc[7, 41] = "bogus_attack"  # a label the dataset does not have
    df = df.drop(index=[11, 12])  # two rows lost
    df.to_csv(f, header=False, index=False)
    return tmp


@needs_data
def test_a_damaged_copy_is_refused_by_checksum_and_fails_its_suite(tmp_path: Path) -> None:
    from metaad.datasets.validation import validate_dataset

    root = _damaged_nsl_kdd(tmp_path)
    with pytest.raises(ChecksumMismatch, match="KDDTest"):
        load_dataset("nsl_kdd", root)
    ds = load_dataset("nsl_kdd", root, check=False)  # a user's own, unchecked copy
    rep = validate_dataset(ds, report_dir=tmp_path / "report")
    assert not rep.success
    by_check = {f["check"]: f for f in rep.failures}
    assert {"row_count", "range", "type_names"} <= set(by_check)
    assert by_check["range"]["column"] == "src_bytes"
    assert "bogus_attack" in rep.summary()
    assert (tmp_path / "report" / "report.json").is_file()
    assert (tmp_path / "report" / "data_docs" / "index.html").is_file()


@needs_data
def test_a_damaged_time_series_copy_fails_its_suite(tmp_path: Path) -> None:
    from metaad.datasets.validation import validate_dataset

    ds = load_dataset("skab", SHARED)
    bad = ds.table.copy()
    bad.loc[bad.index[:50], "Pressure"] = np.nan  # a sensor drop-out
    bad.loc[bad[TYPE] == "other_5", TYPE] = "other_15"  # a scenario renamed
    rep = validate_dataset(type(ds)(ds.name, bad, ds.categorical, ds.protocol))
    checks = {(f["check"], f["column"]) for f in rep.failures}
    assert ("not_null", "Pressure") in checks and ("type_names", TYPE) in checks
