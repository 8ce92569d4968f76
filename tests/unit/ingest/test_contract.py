"""The data contract: every bad record is rejected with a reason naming the field, the rest goes on."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rtml.ingest.contract import Contract
from rtml.ingest.sources import parse_file, parse_jsonl
from rtml.spec import load_spec

SPEC = load_spec()


def good(i: int = 0, **over) -> dict:
    rec = {
        "event_id": f"e{i}",
        "application_id": f"a{i}",
        "event_time": f"2026-11-25T12:00:{i % 60:02d}Z",
        "Seniority": 9,
        "Home": "rent",
        "Time": 60,
        "Age": 30,
        "Marital": "married",
        "Records": "no",
        "Job": "fixed",
        "Expenses": 73,
        "Income": 129.0,
        "Assets": 0.0,
        "Debt": 0.0,
        "Amount": 800,
        "Price": 846,
    }
    rec.update(over)
    return rec


def jsonl(records: list) -> bytes:
    out = []
    for r in records:
        out.append(r if isinstance(r, str) else json.dumps(r))
    return ("\n".join(out) + "\n").encode()


def run(data: bytes, key: str = "landing/x.jsonl", kind: str = "events", committed=None):
    contract = Contract(SPEC, kind)
    raw = parse_file(key, data, contract)
    res = contract.validate(raw, committed)
    # Conservation, whatever the input.
    assert res.records_in == len(res.accepted) + len(res.rejects)
    return res


def drop(rec: dict, field: str) -> dict:
    rec = dict(rec)
    rec.pop(field)
    return rec


BAD = [
    ("malformed JSON", '{"event_id": "b", "Age": 30', "malformed JSON"),
    ("not an object", "[1, 2, 3]", "not a JSON object"),
    ("string for an integer", good(99, Age="forty"), "wrong type: Age"),
    ("bool for a number", good(99, Income=True), "wrong type: Income"),
    ("fractional integer", good(99, Age=36.5), "wrong type: Age expected integer"),
    ("NaN literal", '{"event_id": "b", "application_id": "a", "event_time": "2026-11-25T12:00:00Z", '
     '"Seniority": 1, "Home": "rent", "Time": 12, "Age": 40, "Marital": "single", "Records": "no", '
     '"Job": "fixed", "Expenses": 10, "Income": NaN, "Assets": 0, "Debt": 0, "Amount": 100, "Price": 100}', "NaN: Income"),
    ("infinity", json.dumps(good(99, Debt=float("inf"))), "infinite: Debt"),
    ("out of range", good(99, Age=150), "out of range: Age=150 not in [18, 100]"),
    ("below min", good(99, Amount=-5), "out of range: Amount=-5"),
    ("unknown category", good(99, Home="castle"), "unknown category: Home='castle'"),
    ("number for a category", good(99, Home=5), "wrong type: Home"),
    ("missing required field", drop(good(99), "Amount"), "missing field: Amount"),
    ("null required field", good(99, Records=None), "missing field: Records"),
    ("missing event id", drop(good(99), "event_id"), "missing field: event_id"),
    ("empty event id", good(99, event_id=""), "missing field: event_id"),
    ("bad timestamp", good(99, event_time="yesterday"), "invalid timestamp: event_time"),
    ("oversized record", good(99, notes="x" * 70_000), "oversized record"),
]


@pytest.mark.parametrize("case,bad,reason", BAD, ids=[b[0] for b in BAD])
def test_bad_record_is_quarantined_with_reason_and_the_batch_goes_on(case, bad, reason):
    records = [good(1), bad, good(2)]
    res = run(jsonl(records))
    assert res.accepted["event_id"].tolist() == ["e1", "e2"]
    assert len(res.rejects) == 1
    rej = res.rejects[0]
    assert any(reason in r for r in rej["reasons"]), rej["reasons"]
    assert rej["source"] == "landing/x.jsonl:2"  # the line number points at the bad record


def test_nullable_feature_may_be_missing_and_types_are_canonical():
    res = run(jsonl([good(1, Income=None, Home=None), drop(good(2), "Income")]))
    assert len(res.accepted) == 2 and not res.rejects
    acc = res.accepted
    assert acc["Income"].isna().all()
    assert acc["Age"].dtype == "float64" and acc["Home"].dtype == object
    assert str(acc["event_time"].dtype) == "datetime64[us, UTC]"
    assert list(acc.columns) == [SPEC.event_id, SPEC.entity_id, SPEC.event_time, *SPEC.feature_names]


def test_fast_path_catches_nan_and_reports_line():
    # Every line is valid JSON for pyarrow's typed reader (which reads NaN as a float): the fast path
    # must still tell NaN from null.
    lines = [json.dumps(good(i)) for i in range(5)]
    lines[3] = lines[3].replace('"Income": 129.0', '"Income": NaN')
    res = run(("\n".join(lines) + "\n").encode())
    assert [r["source"] for r in res.rejects] == ["landing/x.jsonl:4"]
    assert res.rejects[0]["reasons"] == ["NaN: Income is NaN"]
    assert len(res.accepted) == 4


def test_several_reasons_for_one_record():
    res = run(jsonl([good(1, Age=5, Home="castle", Amount=None)]))
    reasons = res.rejects[0]["reasons"]
    assert any(r.startswith("out of range: Age") for r in reasons)
    assert any(r.startswith("unknown category: Home") for r in reasons)
    assert any(r.startswith("missing field: Amount") for r in reasons)
    assert res.reason_counts == {"missing field": 1, "out of range": 1, "unknown category": 1}


def test_duplicate_ids_in_batch_first_valid_wins():
    records = [good(1), good(1, Age=41), good(2, Age=500), good(2, Age=50)]
    res = run(jsonl(records))
    # e1: the first copy wins; e2: the first copy is invalid, so the corrected resend is accepted.
    assert res.accepted["event_id"].tolist() == ["e1", "e2"]
    assert res.accepted["Age"].tolist() == [30.0, 50.0]
    dup = [r for r in res.rejects if any(x.startswith("duplicate event_id") for x in r["reasons"])]
    assert len(dup) == 1 and dup[0]["source"] == "landing/x.jsonl:2"
    assert "also at landing/x.jsonl:1" in dup[0]["reasons"][0]


def test_duplicate_of_committed_batch():
    res = run(jsonl([good(1), good(2)]), committed={"e1": "20261125T115500-20261125T120000"})
    assert res.accepted["event_id"].tolist() == ["e2"]
    assert res.rejects[0]["reasons"] == [
        "duplicate event_id: 'e1' already committed in batch 20261125T115500-20261125T120000"
    ]


def test_labels_contract_and_corrections():
    lab = [
        {"event_id": "e1", "Status": "bad", "label_time": "2026-11-25T13:00:00Z"},
        {"event_id": "e2", "Status": "good", "label_time": "2026-11-25T13:00:01Z"},
        {"event_id": "e3", "Status": "maybe", "label_time": "2026-11-25T13:00:02Z"},
        {"event_id": "e4", "label_time": "2026-11-25T13:00:03Z"},
    ]
    committed = {"e1": ("b0", "bad"), "e2": ("b0", "bad")}
    res = run(jsonl(lab), kind="labels", committed=committed)
    # e1 same label again: duplicate; e2 a different label: a correction, accepted.
    assert res.accepted["event_id"].tolist() == ["e2"]
    by_src = {r["source"].rsplit(":", 1)[1]: r["reasons"] for r in res.rejects}
    assert by_src["1"][0].startswith("duplicate event_id")
    assert by_src["3"][0].startswith("unknown category: Status='maybe'")
    assert by_src["4"] == ["missing field: Status"]


def test_csv_is_typed_by_the_contract():
    df = pd.DataFrame([good(1), good(2, Age="forty"), good(3, Income="nan"), good(4, Income=None)])
    text = df.to_csv(index=False)
    text += "e5,a5,2026-11-25T12:00:05Z,1,rent\n"  # too few fields
    res = run(text.encode(), key="landing/x.csv")
    assert res.accepted["event_id"].tolist() == ["e1", "e4"]
    assert res.accepted["Age"].tolist() == [30.0, 30.0]
    reasons = {r["source"]: r["reasons"] for r in res.rejects}
    assert reasons["landing/x.csv:6"][0].startswith("malformed CSV row")
    assert reasons["landing/x.csv:3"][0].startswith("wrong type: Age")
    assert reasons["landing/x.csv:4"] == ["NaN: Income is NaN"]


def test_parquet_file_with_nan_and_wrong_column_type():
    df = pd.DataFrame([good(1), good(2), good(3)])
    df["Age"] = ["30", "31", "x"]  # strings in a numeric column
    table = pa.Table.from_pandas(df.drop(columns=["Income"]))
    # A real NaN next to a real null (pandas would merge them).
    table = table.append_column("Income", pa.array([1.0, np.nan, None], from_pandas=False))
    buf = io.BytesIO()
    pq.write_table(table, buf)
    res = run(buf.getvalue(), key="landing/x.parquet")
    assert res.accepted["event_id"].tolist() == ["e1"]
    reasons = {r["source"]: r["reasons"] for r in res.rejects}
    assert reasons["landing/x.parquet#row:2"] == ["NaN: Income is NaN"]
    assert any(r.startswith("wrong type: Age") for r in reasons["landing/x.parquet#row:3"])


@pytest.mark.parametrize(
    "key,data,reason",
    [
        ("landing/x.parquet", b'{"event_id": "e1"}\n', "named .parquet but is not a Parquet file (it looks like text)"),
        ("landing/x.jsonl", b"PAR1\x00\x01binary", "named .jsonl but is a parquet file"),
        ("landing/x.csv", b'{"event_id": "e1"}\n', "looks like JSON lines, not CSV"),
        ("landing/x.jsonl", b"\x1f\x8b\x08\x00gzipped", "is a gzip file"),
        ("landing/x.txt", b"hello", "unsupported file type '.txt'"),
        ("landing/x.jsonl", b'{"a": 1}\n\x00\x01\x02', "is not text (it holds NUL bytes)"),
    ],
)
def test_file_that_is_not_what_its_name_says_is_refused(key, data, reason):
    res = run(data, key=key)
    assert len(res.rejects) == 1 and len(res.accepted) == 0
    assert res.rejects[0]["source"] == key
    assert res.rejects[0]["reasons"][0].startswith("file refused:")
    assert reason in res.rejects[0]["reasons"][0]


def test_empty_file_and_blank_lines():
    assert run(b"").records_in == 0
    res = run(b"\n" + jsonl([good(1)]) + b"\n\n")
    assert res.records_in == 1 and len(res.accepted) == 1


def test_stream_payload_positions_are_stream_ids():
    contract = Contract(SPEC)
    raw = parse_jsonl(jsonl([good(1), "oops", good(2, Age=3)]), "s", contract, names=["1-0", "1-1", "2-0"])
    res = contract.validate(raw)
    assert [r["source"] for r in res.rejects] == ["1-1", "2-0"]
    assert res.records_in == 3


def test_clean_batch_uses_no_python_loop_per_row():
    # A large clean batch goes through the typed fast path: the raw frame is typed, not object.
    contract = Contract(SPEC)
    data = jsonl([good(i) for i in range(2000)])
    raw = parse_jsonl(data, "big.jsonl", contract)
    assert raw.frame["Age"].dtype == "float64"
    res = contract.validate(raw)
    assert len(res.accepted) == 2000 and not res.rejects


def test_typed_and_untyped_parts_concatenate():
    # One file takes the fast (typed) path, the other the careful (object) path: together they must
    # validate exactly like each alone.
    from rtml.ingest.contract import RawBatch

    contract = Contract(SPEC)
    clean = parse_file("a.jsonl", jsonl([good(1), good(2, Income=None)]), contract)
    messy = parse_file("b.jsonl", jsonl([good(3), "nope", good(4, Age="x"), good(5, Income=float("nan"))]), contract)
    assert clean.frame["Age"].dtype == "float64" and messy.frame["Age"].dtype == object
    res = contract.validate(RawBatch.concat([clean, messy]))
    assert res.accepted["event_id"].tolist() == ["e1", "e2", "e3"]
    assert res.accepted["event_time"].notna().all() and res.accepted["Income"].isna().tolist() == [False, True, False]
    assert [r["source"] for r in res.rejects] == ["b.jsonl:2", "b.jsonl:3", "b.jsonl:4"]
    assert res.records_in == 6


def test_stream_batch_ids_sort_like_the_stream():
    from datetime import UTC, datetime

    from rtml.ingest.sources import batch_id_for_ids

    ms = int(datetime(2026, 11, 25, 12, 0, tzinfo=UTC).timestamp() * 1000)
    a = batch_id_for_ids(f"{ms}-91", f"{ms}-99")
    b = batch_id_for_ids(f"{ms}-191", f"{ms + 1}-0")
    assert a < b and a.startswith("20261125T120000-")
