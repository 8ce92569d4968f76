"""rtml.serve.validation: strict JSON parsing of hostile bytes, record checks against the spec and the
model signature, content types, request bodies and MLflow's scoring protocol; every refusal names its field."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from support.serving import good_record

from rtml.serve.validation import (
    MAX_KEY_CHARS,
    RecordValidator,
    RequestError,
    check_content_type,
    load_json,
    parse_body,
    parse_invocation,
    safe_text,
)


# --- parsing -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (b'{"Age": "\\ud800"}', 400, "Age"),
        (b'{"\\udc00x": 1}', 400, "\\udc00x"),
        (b'{"records": [{"a": 1}, {"event_id": "ok\\udbff"}]}', 400, "records[1].event_id"),
        (b'{"a": 1, "a": 2}', 400, "a"),
        (b'{"records": [{"a": 1}], "records": []}', 400, "records"),
        (b"\xef\xbb\xbf{}", 400, "body"),
        (b'{"a": "\xff"}', 400, "body"),
        (b'{"a": "\xed\xa0\x80"}', 400, "body"),  # a surrogate encoded as UTF-8 (CESU): invalid UTF-8
        ('{"a": "x"}'.encode("utf-16"), 400, "body"),
        (b"   ", 400, "body"),
        (b"[" * 3000 + b"]" * 3000, 400, "body"),
        (b'{"a": 1' + b"0" * 5000 + b"}", 400, "body"),  # over Python's integer digit limit
    ],
)
def test_load_json_refuses_hostile_bytes_naming_the_field(body, status, field):
    with pytest.raises(RequestError) as err:
        load_json(body)
    assert err.value.status == status and err.value.field == field, err.value.message
    json.dumps(err.value.body()).encode("ascii")  # the answer itself is always encodable


def test_load_json_keeps_good_bodies_and_strings_that_look_like_keys():
    assert load_json(b'{"Home": "a\\":", "x": [1, {"y": "z:"}]}') == {"Home": 'a":', "x": [1, {"y": "z:"}]}
    assert load_json(b'{"a": NaN}')["a"] != load_json(b'{"a": NaN}')["a"]  # NaN reaches the validator
    assert math.isinf(load_json(b'{"a": -Infinity}')["a"])
    assert load_json(b'{"a": 1' + b"0" * 400 + b"}")["a"] == 10**400  # huge, but under the digit limit


def test_validator_names_huge_numbers_and_long_ids(spec):
    v = RecordValidator(spec)
    rec = good_record(spec)
    for bad, field in (({**rec, "Assets": 10**400}, "Assets"), ({**rec, "Income": -(10**400)}, "Income"),
                       ({**rec, "event_id": "e" * 300}, "event_id"), ({**rec, "event_id": 2**70}, "event_id"),
                       ({**rec, "Home": "\ud800"}, "Home"), ({**rec, "event_id": "x\udfff"}, "event_id")):
        with pytest.raises(RequestError) as err:
            v.validate([bad], single=True)
        assert err.value.status == 422 and err.value.field == field, err.value.message
        json.dumps(err.value.body()).encode("ascii")


@pytest.mark.parametrize(
    ("ctype", "ok"),
    [(None, True), ("application/json", True), ("application/json; charset=UTF-8", True),
     ("text/csv", False), ("application/x-www-form-urlencoded", False), ("application/json; charset=latin-1", False),
     ("application/json; boundary=x", False)],
)
def test_content_types(ctype, ok):
    if ok:
        check_content_type(ctype)
    else:
        with pytest.raises(RequestError) as err:
            check_content_type(ctype)
        assert err.value.status == 415 and err.value.field == "content-type"


# --- records -------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_numbers_are_refused_naming_the_field(spec, value):
    with pytest.raises(RequestError) as err:
        RecordValidator(spec).validate([{**good_record(spec), "Income": value}], single=False)
    assert err.value.status == 422 and err.value.field == "records[0].Income"
    assert "finite" in err.value.message


def test_ids_are_kept_as_text_within_64_bits(spec):
    v = RecordValidator(spec)
    rec = good_record(spec)
    _, keys = v.validate([{**rec, "event_id": -(2**63)}, {**rec, "event_id": "x" * MAX_KEY_CHARS}, rec], single=False)
    assert keys["event_id"] == [str(-(2**63)), "x" * MAX_KEY_CHARS, None]
    for bad in (2**63, True, 1.5, ["a"]):
        with pytest.raises(RequestError) as err:
            v.validate([{**rec, "event_id": bad}], single=False)
        assert err.value.field == "records[0].event_id"


def test_frame_has_the_training_dtypes(spec):
    v = RecordValidator(spec)
    rec = good_record(spec)
    cols, _ = v.validate([rec, {**rec, "Income": None, "Home": None}], single=False)
    df = v.frame(cols)
    assert list(df.columns) == v.columns
    assert all(df[c].dtype == np.float64 for c in v.numeric)
    assert df["Home"].dtype == object and df["Home"].tolist() == ["rent", None]
    assert df["Income"].iloc[0] == 129.0 and np.isnan(df["Income"].iloc[1])


def test_signature_columns_the_spec_does_not_describe(spec):
    """A model input outside the spec is checked by its signature type; spec features keep their rules."""
    v = RecordValidator(spec, [("Age", "long", True), ("flag", "boolean", True), ("note", "string", False)])
    assert v.columns == ["Age", "flag", "note"] and v.numeric == ["Age"]
    cols, _ = v.validate([{"Age": 30, "flag": True, "note": None}], single=True)
    assert cols == {"Age": [30.0], "flag": ["true"], "note": [None]}
    for bad, field in (({"Age": 3, "flag": True, "note": "x"}, "Age"),  # the spec's min still applies
                       ({"Age": 30, "flag": 1, "note": "x"}, "flag"),
                       ({"Age": 30, "flag": False, "note": "\udfff"}, "note"),
                       ({"Age": 30, "flag": None, "note": "x"}, "flag")):
        with pytest.raises(RequestError) as err:
            v.validate([bad], single=True)
        assert err.value.field == field, err.value.message


def test_request_error_retry_after_is_whole_seconds():
    assert RequestError(503, "busy", retry_after=0.2).headers() == {"Retry-After": "1"}
    assert RequestError(503, "busy", retry_after=2.5).headers() == {"Retry-After": "3"}
    assert RequestError(422, "bad").headers() is None
    assert RequestError(422, "bad", "x").body() == {"error": "bad", "field": "x"}


def test_safe_text_escapes_surrogates_and_cuts_long_text():
    assert safe_text("a\ud800") == "a\\ud800"
    out = safe_text("y" * 500, limit=10)
    assert out.startswith("y" * 10) and "(500 chars)" in out and len(out) < 40


# --- request bodies ------------------------------------------------------------------------------
def test_parse_body_shapes():
    assert parse_body(b'{"a": 1}') == ([{"a": 1}], True)
    assert parse_body(b'[{"a": 1}, {"a": 2}]') == ([{"a": 1}, {"a": 2}], False)
    assert parse_body(b'{"records": [{"a": 1}]}') == ([{"a": 1}], False)
    # "records" beside other fields: one record that happens to have a field of that name
    assert parse_body(b'{"records": [1], "a": 2}') == ([{"records": [1], "a": 2}], True)
    for body, field in ((b'{"records": {"a": 1}}', "records"), (b'"text"', None), (b"null", None)):
        with pytest.raises(RequestError) as err:
            parse_body(body)
        assert err.value.status == 422 and err.value.field == field


def test_parse_invocation_formats():
    rows = [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]
    assert parse_invocation({"dataframe_records": rows}) == (rows, "dataframe_records")
    assert parse_invocation({"dataframe_split": {"columns": ["a", "b"], "data": [[1, "x"], [2, "y"]]}}) == (
        rows, "dataframe_split.data")
    assert parse_invocation({"inputs": {"a": [1, 2], "b": ["x", "y"]}, "params": None}) == (rows, "inputs")
    assert parse_invocation({"instances": {}}) == ([], "instances")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ("x", None),
        ({"dataframe_split": {"columns": ["a"], "data": [[1]], "extra": 1}}, "dataframe_split.extra"),
        ({"dataframe_split": {"columns": ["a"], "data": [[1]], "index": [0, 1]}}, "dataframe_split.index"),
        ({"dataframe_split": {"columns": [1], "data": []}}, "dataframe_split.columns"),
        ({"dataframe_split": {"columns": ["a"], "data": {"a": 1}}}, "dataframe_split.data"),
        ({"dataframe_split": [1]}, "dataframe_split"),
        ({"dataframe_records": {"a": 1}}, "dataframe_records"),
        ({"inputs": {"a": [1, 2], "b": [1]}}, "inputs"),
        ({"inputs": {"a": 1}}, "inputs"),
        ({"inputs": "x"}, "inputs"),
        ({"params": {}}, None),
    ],
)
def test_parse_invocation_refusals_name_the_field(body, field):
    with pytest.raises(RequestError) as err:
        parse_invocation(body)
    assert err.value.status == 400 and err.value.field == field, err.value.message
