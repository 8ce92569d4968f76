"""rtml.ingest.produce: the seeded replay (scenarios: drift, group shift, labels, broken events), the
landing files it writes to a local folder (one per window, keyed by arrival, every record once in
every format), argument errors, and the Redis trim that never drops unacknowledged entries (a fake client)."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from rtml.ingest import produce as prod
from rtml.ingest.sources import key_time, landing_prefix, landing_store
from rtml.settings import Settings
from rtml.spec import load_spec

SPEC = load_spec()
DS = SPEC.dataset.name
T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def base():
    return prod.load_base(SPEC).head(300)


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(storage="local", home=tmp_path, lake_uri=str(tmp_path / "lake"))


def test_producer_is_seeded_and_scenarios_apply():
    a_ev, a_lb = prod.build(SPEC, rows=500, start=T0, seed=7)
    b_ev, b_lb = prod.build(SPEC, rows=500, start=T0, seed=7)
    pd.testing.assert_frame_equal(a_ev, b_ev)
    pd.testing.assert_frame_equal(a_lb, b_lb)
    assert a_ev[SPEC.event_id].is_unique and SPEC.target.name not in a_ev.columns
    ev_time = a_ev.set_index(SPEC.event_id)[SPEC.event_time]
    assert (a_lb["label_time"].to_numpy() - ev_time.loc[a_lb[SPEC.event_id]].to_numpy() == pd.Timedelta(seconds=600)).all()
    mid = T0 + timedelta(seconds=250)
    d_ev, _ = prod.build(SPEC, rows=500, start=T0, seed=7, drift_from=mid, drift_features=["Amount"], drift_factor=2.0)
    before = d_ev[SPEC.event_time] < pd.Timestamp(mid)
    assert (d_ev.loc[before, "Amount"] == a_ev.loc[before, "Amount"]).all()
    assert (d_ev.loc[~before, "Amount"] == (a_ev.loc[~before, "Amount"] * 2).clip(upper=100000)).all()
    g_ev, _ = prod.build(SPEC, rows=2000, start=T0, seed=7, group_shift=prod.GroupShift.parse("Marital=single:0.7"))
    assert 0.65 < (g_ev["Marital"] == "single").mean() < 0.75
    with pytest.raises(ValueError, match="COLUMN=VALUE:SHARE"):
        prod.GroupShift.parse("Marital")


def test_events_are_paced_by_the_rate_and_another_seed_differs(base):
    ev, lb = prod.build(SPEC, rows=10, start=T0, rate=4.0, seed=1, base=base, label_fraction=0.5)
    times = ev[SPEC.event_time]
    assert times.iloc[0] == pd.Timestamp(T0) and (times.diff().dropna() == pd.Timedelta(milliseconds=250)).all()
    assert 0 < len(lb) < 10 and lb["label_time"].is_monotonic_increasing
    other, _ = prod.build(SPEC, rows=10, start=T0, rate=4.0, seed=2, base=base)
    assert not ev[SPEC.feature_names].equals(other[SPEC.feature_names])
    assert not set(ev[SPEC.event_id]) & set(other[SPEC.event_id])  # ids carry the seed


def test_bad_fraction_breaks_events_in_the_three_ways(base):
    ev, _ = prod.build(SPEC, rows=300, start=T0, seed=4, base=base, bad_fraction=0.1)
    assert not ev[SPEC.event_id].is_unique  # a duplicate delivery
    cats = [f for f in SPEC.features if f.type == "categorical"]
    assert any((ev[f.name] == "not-a-category").any() for f in cats)
    nums = [f for f in SPEC.features if f.is_numeric and f.max is not None]
    assert any((pd.to_numeric(ev[f.name]) > f.max).any() for f in nums)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"rate": 0}, "--rate must be positive"),
        ({"rate": -1.0}, "--rate must be positive"),
        ({"drift_features": ["Nope"]}, "'Nope' is not a feature"),
        ({"group_shift": prod.GroupShift("Colour", "red", 0.5)}, "unknown column 'Colour'"),
        ({"group_shift": prod.GroupShift("Marital", "pirate", 0.5)}, "is empty or everything"),
    ],
)
def test_build_refuses_bad_arguments(base, kw, match):
    with pytest.raises(ValueError, match=match):
        prod.build(SPEC, rows=10, start=T0, base=base, **kw)


@pytest.mark.parametrize("text", ["Marital=single:1.5", "Marital=single:-0.1", "Marital=single:x", "=:"])
def test_group_shift_parse_refuses(text):
    with pytest.raises(ValueError, match="--group-shift"):
        prod.GroupShift.parse(text)


def test_group_shift_parse_splits_at_the_last_colon():
    assert prod.GroupShift.parse("Job=a:b=c:0.25") == prod.GroupShift("Job", "a:b=c", 0.25)


def _read(store, key: str) -> pd.DataFrame:
    data = store.get(key)
    if key.endswith(".jsonl"):
        return pd.read_json(io.BytesIO(data), lines=True, dtype=False)
    if key.endswith(".csv"):
        return pd.read_csv(io.BytesIO(data))
    return pd.read_parquet(io.BytesIO(data))


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_landing_files_hold_every_record_once_keyed_by_arrival(settings, fmt):
    out = prod.produce(SPEC, to="landing", fmt=fmt, settings=settings, rows=130, start=T0, rate=1.0, seed=5,
                       file_seconds=60.0, label_delay=30.0)
    assert (out["events"], out["labels"], out["event_files"]) == (130, 130, 3)  # 12:00, 12:01, 12:02
    store = landing_store(settings)
    keys = sorted(store.list(landing_prefix(DS, "events")))
    assert len(keys) == 3 and all(k.endswith("." + fmt) for k in keys) and out["first_key"] == keys[0]
    events, _ = prod.build(SPEC, rows=130, start=T0, rate=1.0, seed=5, label_delay=30.0)
    got = pd.concat([_read(store, k) for k in keys], ignore_index=True)
    assert got[SPEC.event_id].tolist() == events[SPEC.event_id].tolist()
    for k in keys:  # the key time is the last event of the file
        part = _read(store, k)
        assert key_time(k) == pd.to_datetime(part[SPEC.event_time], utc=True).max().to_pydatetime()
    labels = sorted(store.list(landing_prefix(DS, "labels")))
    assert out["label_files"] == len(labels) and sum(len(_read(store, k)) for k in labels) == 130


def test_no_labels_and_another_landing_store(settings, tmp_path):
    other = tmp_path / "elsewhere"
    out = prod.produce(SPEC, to="landing", settings=settings, landing_uri=str(other), labels=False, rows=5,
                       start=T0, seed=1)
    assert (out["labels"], out["label_files"], out["event_files"]) == (0, 0, 1)
    assert "5 events and 0 labels" in out["message"]
    assert landing_store(settings).list(landing_prefix(DS, "events")) == []
    assert len(landing_store(settings, str(other)).list(landing_prefix(DS, "events"))) == 1


@pytest.mark.parametrize(
    ("kw", "match"),
    [({"to": "s3"}, "unknown target 's3'"), ({"fmt": "xml"}, "unknown format 'xml'"),
     ({"to": "redis", "realtime": True}, "--realtime with redis"),
     ({"to": "kafka", "realtime": True}, "--realtime with kafka")],
)
def test_produce_refuses_bad_targets_before_writing(settings, kw, match):
    with pytest.raises(ValueError, match=match):
        prod.produce(SPEC, settings=settings, rows=5, start=T0, **kw)


class FakeRedis:
    """The stream calls safe_trim makes: ids are (ms, 0) for ms in 1..n."""

    def __init__(self, n: int, groups: list[dict], pending_min: dict[str, str] | None = None) -> None:
        self.ids = [f"{i}-0" for i in range(1, n + 1)]
        self.groups = groups
        self.pending_min = pending_min or {}
        self.trimmed_to: str | None = None

    def xlen(self, stream):
        return len(self.ids)

    def xinfo_groups(self, stream):
        return self.groups

    def xrevrange(self, stream, hi, lo, count):
        return [(i.encode(), {}) for i in reversed(self.ids)][:count]

    def xpending(self, stream, name):
        return {"min": self.pending_min.get(name)}

    def xtrim(self, stream, minid, approximate):
        assert approximate is False
        self.trimmed_to = minid
        def sid(text):
            ms, seq = text.split("-")
            return int(ms), int(seq)

        before = len(self.ids)
        self.ids = [i for i in self.ids if sid(i) >= sid(minid)]
        return before - len(self.ids)


def test_safe_trim_keeps_what_a_group_has_not_acknowledged():
    # the group read up to 8, of which 5.. are still pending: trimming to 3 entries would drop 5..7
    r = FakeRedis(10, [{"name": "g", "last-delivered-id": "8-0", "pending": 2}], {"g": "5-0"})
    assert prod.safe_trim(r, "s", 3) == 4 and r.trimmed_to == "5-0" and r.ids[0] == "5-0"
    # all read and acknowledged up to 9: the length bound decides
    r = FakeRedis(10, [{"name": "g", "last-delivered-id": b"9-0", "pending": 0}])
    assert prod.safe_trim(r, "s", 3) == 7 and r.ids == ["8-0", "9-0", "10-0"]
    # the slowest of two groups wins
    r = FakeRedis(10, [{"name": "a", "last-delivered-id": "9-0", "pending": 0},
                       {"name": "b", "last-delivered-id": "2-0", "pending": 0}])
    assert prod.safe_trim(r, "s", 3) == 2 and r.ids[0] == "3-0"


def test_safe_trim_trims_nothing_without_groups_or_under_the_bound():
    r = FakeRedis(10, [])
    assert prod.safe_trim(r, "s", 3) == 0 and r.trimmed_to is None
    r = FakeRedis(3, [{"name": "g", "last-delivered-id": "3-0", "pending": 0}])
    assert prod.safe_trim(r, "s", 3) == 0 and r.trimmed_to is None
    r = FakeRedis(10, [{"name": "g", "last-delivered-id": "0-0", "pending": 0}])  # nothing read yet
    assert prod.safe_trim(r, "s", 3) == 0 and len(r.ids) == 10  # every entry is still to be read
