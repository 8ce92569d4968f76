"""Hostile input: whatever the bytes, every record ends accepted or quarantined with a reason.

Each case is one landing file (usually a good record, the odd one, another good record) run through
the whole batch (parse, contract, Parquet, quarantine, manifest) into a fresh local lake. In every
case the counts conserve, the quarantine reads back as UTF-8 JSON lines with reasons, and the
accepted rows read back from the lake.
"""

from __future__ import annotations

import gzip
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rtml.ingest.batches import ingest_interval
from rtml.ingest.sources import landing_key, landing_store
from rtml.lake import Lake
from rtml.settings import Settings
from rtml.spec import load_spec

SPEC = load_spec()
DS = SPEC.dataset.name
T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
BIG = "9" * 400


def good(i: int = 0, **over) -> dict:
    rec = {
        "event_id": f"e{i}", "application_id": f"a{i}", "event_time": f"2026-11-25T12:00:{i % 60:02d}Z",
        "Seniority": 9, "Home": "rent", "Time": 60, "Age": 30, "Marital": "married", "Records": "no",
        "Job": "fixed", "Expenses": 73, "Income": 129.0, "Assets": 0.0, "Debt": 0.0, "Amount": 800, "Price": 846,
    }
    rec.update(over)
    return rec


def line(i: int = 9, **over) -> str:
    return json.dumps(good(i, **over))


def patched(old: str, new: str, i: int = 9) -> str:
    """A good record's JSON text with ``old`` replaced by raw JSON text ``new`` (for what json.dumps
    cannot write: NaN in lists, lone surrogates, duplicate keys, huge literals)."""
    text = line(i)
    assert old in text, old
    return text.replace(old, new, 1)


def around(odd: str | bytes) -> bytes:
    """good(1), the odd line, good(2): JSON lines."""
    odd_b = odd if isinstance(odd, bytes) else odd.encode("utf-8", "surrogatepass")
    return json.dumps(good(1)).encode() + b"\n" + odd_b + b"\n" + json.dumps(good(2)).encode() + b"\n"


def csv_bytes(rows: list[dict], extra: str = "") -> bytes:
    return (pd.DataFrame(rows).to_csv(index=False) + extra).encode()


def parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def good_table(n: int = 3, **cols) -> pa.Table:
    """n good records as an Arrow table, with some columns replaced by the given arrays."""
    t = pa.Table.from_pylist([good(i + 1) for i in range(n)])
    for name, arr in cols.items():
        idx = t.schema.get_field_index(name)
        t = t.set_column(idx, name, arr) if idx >= 0 else t.append_column(name, arr)
    return t


J, C, P = "jsonl", "csv", "parquet"

# (case, file suffix, bytes, accepted, a reason that must be among the quarantined ones or None)
CASES = [
    # --- numbers beyond float64 -------------------------------------------------------------------
    ("int of 400 digits", J, around(patched('"Income": 129.0', f'"Income": {BIG}')), 2, "out of range: Income"),
    ("negative int of 400 digits", J, around(patched('"Amount": 800', f'"Amount": -{BIG}')), 2, "out of range: Amount"),
    ("int of 400 digits in an integer field", J, around(patched('"Age": 30', f'"Age": {BIG}')), 2, "out of range: Age"),
    ("int of 5000 digits", J, around(patched('"Income": 129.0', '"Income": ' + "7" * 5000)), 2, "out of range: Income"),
    ("1e400 literal", J, around(patched('"Debt": 0.0', '"Debt": 1e400')), 2, "out of range: Debt"),
    ("int beyond int64, within float64", J, around(patched('"Income": 129.0', '"Income": 18446744073709551616')),
     2, "out of range: Income"),
    ("int of 400 digits as event id", J, around(patched('"event_id": "e9"', f'"event_id": {BIG}')), 2, "wrong type: event_id"),
    ("400-digit number in CSV", C, csv_bytes([good(1), good(2, Income=BIG)]), 1, "out of range: Income"),
    ("1e400 in CSV", C, csv_bytes([good(1), good(2, Income="1e400")]), 1, "out of range: Income"),
    # --- NaN / Infinity at any depth ------------------------------------------------------------------
    ("NaN top level", J, around(patched('"Income": 129.0', '"Income": NaN')), 2, "NaN: Income"),
    ("NaN in a list", J, around(patched('"Amount": 800', '"Amount": [NaN]')), 2, "wrong type: Amount"),
    ("NaN deep in an object", J, around(patched('"Amount": 800', '"Amount": {"a": [1, {"b": NaN}]}')), 2,
     "wrong type: Amount"),
    ("Infinity top level", J, around(patched('"Debt": 0.0', '"Debt": Infinity')), 2, "infinite: Debt"),
    ("-Infinity in an unknown field", J, around(patched('"Debt": 0.0', '"Debt": 0.0, "extra": [-Infinity]')), 3, None),
    ("NaN in the event id", J, around(patched('"event_id": "e9"', '"event_id": NaN')), 2, "wrong type: event_id"),
    ("the string 'NaN' as event id (valid)", J, around(line(event_id="NaN")), 3, None),
    ("inf in a Parquet float column", P, parquet_bytes(good_table(Debt=pa.array([0.0, np.inf, -np.inf]))), 1,
     "infinite: Debt"),
    # --- text: invalid UTF-8, lone surrogates, BOM ------------------------------------------------------
    ("invalid UTF-8 in a value", J, around(patched('"rent"', '"r\\u00e9nt"').encode().replace(b"\\u00e9", b"\xff")), 2,
     "malformed JSON: invalid UTF-8"),
    ("invalid UTF-8 in a key", J, around(b'{"\xc3\x28": 1, ' + line()[1:].encode()), 2, "malformed JSON: invalid UTF-8"),
    ("lone surrogate in a categorical value", J, around(patched('"rent"', '"\\ud800"')), 2, "invalid text: lone UTF-16 surrogate in Home"),
    ("lone surrogate in the event id", J, around(patched('"e9"', '"e\\udfff9"')), 2, "invalid text: lone UTF-16 surrogate in event_id"),
    ("lone surrogate in a key", J, around(patched('"Home"', '"Ho\\udc80me"')), 2, "invalid text: lone UTF-16 surrogate in key"),
    ("lone surrogate nested in an unknown field", J, around(patched('"Debt": 0.0', '"Debt": 0.0, "x": {"y": ["\\ud83d"]}')), 2,
     "invalid text"),
    ("surrogate pair is fine", J, around(patched('"a9"', '"a\\ud83d\\ude009"')), 3, None),
    ("UTF-8 BOM at the start of a JSON lines file", J, b"\xef\xbb\xbf" + around(line()), 3, None),
    ("UTF-8 BOM at the start of a CSV file", C, b"\xef\xbb\xbf" + csv_bytes([good(1), good(2)]), 2, None),
    ("BOM in the middle of a JSON lines file", J, around(b"\xef\xbb\xbf" + line().encode()), 3, None),
    ("invalid UTF-8 row in a CSV file", C, csv_bytes([good(1)]) + b"e7,a7,2026-11-25T12:00:07Z,1,r\xe9nt\n"
     + csv_bytes([good(2)]).split(b"\n", 1)[1], 2, "malformed CSV row: not UTF-8 text"),
    # --- structure ------------------------------------------------------------------------------------
    ("nesting 60 000 deep (oversized)", J, around(patched('"Amount": 800', '"Amount": ' + "[" * 60000 + "]" * 60000)), 2,
     "oversized record"),
    ("nesting 5 000 deep (under the size limit)", J, around(patched('"Amount": 800', '"Amount": ' + "[" * 5000 + "]" * 5000)), 2,
     "malformed JSON: nested too deeply"),
    ("nesting 100 deep in an unknown field", J, around(patched('"Debt": 0.0', '"Debt": 0.0, "x": ' + '{"a":' * 100 + "1" + "}" * 100)),
     3, None),
    ("huge line (1 MB)", J, around(patched('"Home": "rent"', '"Home": "' + "x" * 1_000_000 + '"')), 2, "oversized record"),
    ("JSON array", J, around("[1, 2, 3]"), 2, "not a JSON object: got list"),
    ("JSON string", J, around('"hello"'), 2, "not a JSON object: got str"),
    ("JSON number", J, around("42"), 2, "not a JSON object: got int"),
    ("JSON null", J, around("null"), 2, "not a JSON object: got NoneType"),
    ("truncated JSON", J, around(line()[:-20]), 2, "malformed JSON"),
    ("duplicate key, same value", J, around(line()[:-1] + ', "Age": 30}'), 2, "malformed JSON: duplicate key 'Age'"),
    ("duplicate key, other value", J, around(line()[:-1] + ', "Age": "x"}'), 2, "malformed JSON: duplicate key 'Age'"),
    # --- wrong types, ranges, categories, fields ---------------------------------------------------------
    ("string for a number", J, around(line(Income="lots")), 2, "wrong type: Income"),
    ("object for a number", J, around(line(Income={"v": 1})), 2, "wrong type: Income"),
    ("bool for a number", J, around(line(Age=True)), 2, "wrong type: Age"),
    ("list for a category", J, around(line(Home=["rent"])), 2, "wrong type: Home"),
    ("number for a category", J, around(line(Home=1)), 2, "wrong type: Home"),
    ("float for the event id", J, around(line(event_id=1.5)), 2, "wrong type: event_id"),
    ("object for the event id", J, around(line(event_id={"id": 1})), 2, "wrong type: event_id"),
    ("out of range", J, around(line(Age=-1)), 2, "out of range: Age"),
    ("unknown category", J, around(line(Marital="it's complicated")), 2, "unknown category: Marital"),
    ("missing required field", J, around(json.dumps({k: v for k, v in good(9).items() if k != "Age"})), 2,
     "missing field: Age"),
    ("unknown field (recorded, accepted)", J, around(line(shoe_size=44)), 3, None),
    ("empty object", J, around("{}"), 2, "missing field: event_id"),
    # --- timestamps in odd forms ------------------------------------------------------------------------
    ("timestamp: words", J, around(line(event_time="yesterday")), 2, "invalid timestamp"),
    ("timestamp: epoch number", J, around(line(event_time=1764072000)), 2, "invalid timestamp"),
    ("timestamp: year 0", J, around(line(event_time="0000-01-01T00:00:00Z")), 2, "invalid timestamp"),
    ("timestamp: year 10000", J, around(line(event_time="10000-01-01T00:00:00Z")), 2, "invalid timestamp"),
    ("timestamp: month 13", J, around(line(event_time="2026-13-01T00:00:00Z")), 2, "invalid timestamp"),
    ("timestamp: leap second", J, around(line(event_time="2026-12-31T23:59:60Z")), 2, "invalid timestamp"),
    ("timestamp: empty string", J, around(line(event_time="")), 2, "event_time"),
    ("timestamp: a list", J, around(line(event_time=["2026-11-25T12:00:00Z"])), 2, "invalid timestamp"),
    ("timestamp: 400-digit number", J, around(patched('"event_time": "2026-11-25T12:00:09Z"', f'"event_time": {BIG}')), 2,
     "invalid timestamp"),
    ("timestamp: offset +14:00 (valid)", J, around(line(event_time="2026-11-25T12:00:00+14:00")), 3, None),
    ("timestamp: naive (valid, UTC)", J, around(line(event_time="2026-11-25T12:00:00")), 3, None),
    ("timestamp: 12 fractional digits (valid)", J, around(line(event_time="2026-11-25T12:00:00.123456789123Z")), 3, None),
    ("timestamp: year 0 in Parquet", P, parquet_bytes(good_table(event_time=pa.array(
        [datetime(2026, 11, 25, tzinfo=UTC), None, datetime(2026, 11, 25, tzinfo=UTC)], pa.timestamp("us", tz="UTC"))
        .fill_null(pa.scalar(-62167219200 * 10**6, pa.timestamp("us", tz="UTC"))))), 2, "outside years 1..9999"),
    # --- CSV and Parquet with wrong column types ------------------------------------------------------------
    ("CSV: text in a numeric column", C, csv_bytes([good(1), good(2, Age="forty")]), 1, "wrong type: Age"),
    ("CSV: a row with too many fields", C, csv_bytes([good(1)], "e5,a5,x,y,z,1,2,3,4,5,6,7,8,9,10,11,12,13,14\n"), 1,
     "malformed CSV row"),
    ("CSV: header only", C, csv_bytes([good(1)]).split(b"\n", 1)[0] + b"\n", 0, None),
    ("Parquet: strings in a numeric column", P, parquet_bytes(good_table(Age=pa.array(["30", "x", "31"]))), 2,
     "wrong type: Age"),
    ("Parquet: list column", P, parquet_bytes(good_table(Amount=pa.array([[1], [2], [3]]))), 0, "wrong type: Amount"),
    ("Parquet: struct column", P, parquet_bytes(good_table(Home=pa.array([{"a": 1}, {"a": 2}, {"a": 3}]))), 0,
     "wrong type: Home"),
    ("Parquet: int event id", P, parquet_bytes(good_table(event_id=pa.array([1, 2, 3]))), 3, None),
    ("Parquet: epoch ints as event time", P, parquet_bytes(good_table(event_time=pa.array([1, 2, 3]))), 0,
     "invalid timestamp"),
    ("Parquet: all-null column", P, parquet_bytes(good_table(Age=pa.nulls(3))), 0, "missing field: Age"),
    ("Parquet: decimal column (valid)", P, parquet_bytes(good_table(Income=pa.array(
        [1, 2, 3], pa.int64()).cast(pa.decimal128(38, 0)))), 3, None),
    ("Parquet: truncated file", P, parquet_bytes(good_table())[:-100] + b"PAR1", 0, "file refused"),
    # --- empty and compressed files ---------------------------------------------------------------------------
    ("empty JSON lines file", J, b"", 0, None),
    ("empty CSV file", C, b"", 0, None),
    ("empty Parquet file", P, b"", 0, None),
    ("only blank lines", J, b"\n\n \n", 0, None),
    ("gzip JSON lines", J + ".gz", gzip.compress(around(line())), 3, None),
    ("truncated gzip", J + ".gz", gzip.compress(around(line()) * 50)[:-300], None, "file refused: truncated gzip"),
    ("corrupt gzip", J + ".gz", b"\x1f\x8b\x08\x00garbage-garbage-garbage", 0, "file refused: corrupt gzip"),
    ("gzip named .jsonl", J, gzip.compress(around(line())), 0, "file refused: named .jsonl but is a gzip file"),
]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(storage="local", home=tmp_path, lake_uri=str(tmp_path / "lake"))


@pytest.mark.parametrize("case,fmt,data,accepted,reason", CASES, ids=[c[0] for c in CASES])
def test_hostile_file_conserves_and_quarantines_with_reasons(settings, case, fmt, data, accepted, reason):
    key = landing_key(DS, "events", T0 + timedelta(seconds=30), "hostile", fmt)
    landing_store(settings).put(key, data)
    res = ingest_interval(SPEC, "events", T0, T0 + timedelta(minutes=5), settings=settings, settle_seconds=0)

    assert res["records_in"] == res["accepted"] + res["quarantined"]
    if accepted is not None:
        assert res["accepted"] == accepted, res["reasons"]
    lake = Lake(settings)
    m = lake.manifests(DS, "events")[0]
    assert (m["records_in"], m["accepted"], m["quarantined"]) == (res["records_in"], res["accepted"], res["quarantined"])
    assert len(lake.read_batches(DS, "events")) == res["accepted"]

    reasons: list[str] = []
    if res["quarantined"]:
        # The quarantine is strict UTF-8 JSON, one line per item, each with its reasons.
        lines = lake.store.get(m["quarantine"]).decode("utf-8").splitlines()
        assert len(lines) == res["quarantined"]
        for text in lines:
            item = json.loads(text)
            assert item["reasons"] and item["source"].startswith(key)
            reasons += item["reasons"]
    if reason is None:
        assert not reasons
    else:
        assert any(reason in r for r in reasons), reasons


def test_there_are_at_least_40_cases():
    assert len(CASES) >= 40


def test_lone_surrogate_reads_back_from_the_quarantine_as_written(settings):
    # A surrogate that is only odd for the contract (an unknown category) still round-trips.
    from rtml.ingest.contract import Contract, RawBatch, quarantine_lines
    from rtml.ingest.sources import parse_jsonl

    contract = Contract(SPEC)
    raw = parse_jsonl(around(line()), "x.jsonl", contract)
    frame = raw.frame.astype(object)
    frame.loc[1, "Home"] = "\ud800"
    res = contract.validate(RawBatch(frame, raw.source, raw.size))
    out = quarantine_lines(res.rejects)
    item = json.loads(out.decode("utf-8"))
    assert item["record"]["Home"] == "\ud800"
    assert item["reasons"][0].startswith("unknown category: Home")


def test_a_row_that_breaks_validation_is_isolated_not_the_batch(settings, monkeypatch):
    """Belt and braces: if a value makes the checks themselves raise, only its row is quarantined."""
    from rtml.ingest import contract as contract_mod
    from rtml.ingest.contract import Contract
    from rtml.ingest.sources import parse_jsonl

    contract = Contract(SPEC)
    raw = parse_jsonl(around(line(Job="boom")), "x.jsonl", contract)
    real = Contract._check_column

    def exploding(self, col, s, flag):
        if col.name == "Job" and (s.astype(object) == "boom").any():
            raise OverflowError("simulated")
        return real(self, col, s, flag)

    monkeypatch.setattr(contract_mod.Contract, "_check_column", exploding)
    res = contract.validate(raw)
    assert res.accepted["event_id"].tolist() == ["e1", "e2"]
    assert res.records_in == 3 and len(res.rejects) == 1
    assert res.rejects[0]["source"] == "x.jsonl:2"
    assert res.rejects[0]["reasons"] == ["unprocessable record: OverflowError: simulated"]
