"""rtml.cli.lake: ``rtml lake migrate`` and ``rtml lake maintain`` in-process: a local lake written
before tables is migrated (dry run first, then for real) with counts per kind printed and in JSON;
options reach the functions; bad option values are errors naming the option; the retired
``RTML_LAKE_FORMAT=files`` is a clean error saying what to do."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from functools import lru_cache

import pytest
from support.lake import legacy_copy

from rtml import cli
from rtml import migration as mg
from rtml import tables as tb
from rtml.ingest import produce as prod
from rtml.ingest.batches import ingest_interval
from rtml.lake import Lake
from rtml.settings import Settings, get_settings
from rtml.spec import load_spec

SPEC = load_spec()
DS = SPEC.dataset.name
T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


@pytest.fixture
def lake_env(tmp_path, monkeypatch):
    """RTML_* pointing at a local lake in tmp_path; the settings they give."""
    monkeypatch.setenv("RTML_STORAGE", "local")
    monkeypatch.setenv("RTML_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RTML_LAKE_URI", str(tmp_path / "lake"))
    monkeypatch.delenv("RTML_CATALOG_URI", raising=False)
    monkeypatch.delenv("RTML_LAKE_FORMAT", raising=False)
    yield get_settings(refresh=True)
    monkeypatch.undo()
    get_settings(refresh=True)


def test_migrate_a_lake_written_before_tables_dry_run_then_for_real(lake_env, tmp_path, capsys):
    source = Settings(storage="local", home=tmp_path / "a-home", lake_uri=str(tmp_path / "a-lake"))
    prod.produce(SPEC, to="landing", settings=source, rows=120, start=T0, rate=1.0, seed=5, label_delay=60.0,
                 file_seconds=60.0)
    ingested = Lake(source)
    for kind in ("events", "labels"):
        ingest_interval(SPEC, kind, T0, T0 + timedelta(minutes=5), settings=source, lake=ingested)
    before = ingested.read_batches(DS, "events")
    lake = Lake(lake_env)
    legacy_copy(ingested, lake, DS)
    rows = {kind: sum(m["accepted"] for m in lake.manifests(DS, kind)) for kind in ("events", "labels")}

    assert cli.main(["lake", "migrate", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"{DS}/events: 1 batch(es): would migrate 1 ({rows['events']} rows)" in out
    assert f"{DS}/labels: 1 batch(es): would migrate 1 ({rows['labels']} rows)" in out
    assert lake.manifests(DS, "events")[0]["files"]  # nothing changed

    assert cli.main(["lake", "migrate", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["ok"] and res["kinds"][f"{DS}/events"]["migrated"] == 1
    assert {k: res["kinds"][f"{DS}/{k}"]["rows"] for k in rows} == rows
    assert "rows read after = rows read before for every batch" in res["message"]
    assert Lake(get_settings()).read_batches(DS, "events").equals(before)
    # Again: nothing to do, nothing read twice.
    assert cli.main(["lake", "migrate"]) == 0
    assert f"{DS}/events: 1 batch(es): migrated 0 (0 rows), 1 already in {DS}.events" in capsys.readouterr().out


def test_migrate_takes_the_lake_it_is_given(lake_env, tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(mg, "migrate", lambda settings, **kw: seen.append(settings.lake_uri) or {"ok": True, "message": ""})
    assert cli.main(["lake", "migrate", "--lake", str(tmp_path / "old")]) == 0
    assert cli.main(["lake", "migrate"]) == 0
    assert seen == [str(tmp_path / "old"), str(tmp_path / "lake")]


def test_the_retired_file_format_is_a_clean_error_saying_what_to_do(lake_env, monkeypatch, capsys):
    monkeypatch.setattr(tb, "maintain", lambda *a, **kw: pytest.fail("must not run"))
    monkeypatch.setenv("RTML_LAKE_FORMAT", "files")
    monkeypatch.setattr("rtml.settings._cached", lru_cache(maxsize=1)(Settings))  # as in a new process
    assert cli.main(["lake", "maintain", "--json"]) == 2
    error = json.loads(capsys.readouterr().out)["error"]
    assert error.startswith("settings: RTML_LAKE_FORMAT: ") and "rtml lake migrate --lake" in error


def test_migrate_options_reach_the_function(lake_env, monkeypatch):
    seen = []
    monkeypatch.setattr(mg, "migrate", lambda settings, **kw: seen.append(kw) or {"ok": True, "message": "done"})
    assert cli.main(["lake", "migrate", "--dataset", "a", "--dataset", "b", "--kind", "labels", "--dry-run"]) == 0
    assert cli.main(["lake", "migrate"]) == 0
    assert seen == [{"datasets": ["a", "b"], "kinds": ("labels",), "dry_run": True},
                    {"datasets": None, "kinds": None, "dry_run": False}]


def test_a_migration_that_fails_its_check_is_a_clean_error(lake_env, monkeypatch, capsys):
    def fail(settings, **kw):
        raise tb.TableError("credit.events: batch b1 reads back 3 rows")

    monkeypatch.setattr(mg, "migrate", fail)
    assert cli.main(["lake", "migrate", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["error"] == "lake migrate: credit.events: batch b1 reads back 3 rows"


def test_maintain_options_reach_the_function(lake_env, monkeypatch, capsys):
    seen = []
    monkeypatch.setattr(tb, "maintain", lambda settings, **kw: seen.append(kw) or {"ok": True, "message": "m"})
    assert cli.main(["lake", "maintain", "--older-than-hours", "12", "--retain-last", "3", "--min-files", "4"]) == 0
    assert cli.main(["lake", "maintain"]) == 0
    assert seen == [{"older_than_hours": 12.0, "retain_last": 3, "min_files": 4},
                    {"older_than_hours": None, "retain_last": None, "min_files": tb.COMPACT_MIN_FILES}]


def test_maintain_runs_on_the_tables(lake_env, capsys):
    import pyarrow as pa

    t = tb.Tables(lake_env)
    data = pa.table({"id": ["a"], "ts": pa.array([T0], pa.timestamp("us", tz="UTC"))})
    for i in range(3):
        t.commit_batch("ds", "events", f"b{i}", data, time_column="ts")
    assert cli.main(["lake", "maintain", "--min-files", "2", "--older-than-hours", "1e6", "--json"]) == 0
    (r,) = json.loads(capsys.readouterr().out)["tables"]
    assert (r["table"], r["data_files_before"], r["data_files_after"], r["rows_after"]) == ("ds.events", 3, 1, 3)


@pytest.mark.parametrize(
    ("argv", "error"),
    [(["--older-than-hours", "nan"], "--older-than-hours must be a finite number >= 0"),
     (["--older-than-hours", "-1"], "--older-than-hours must be a finite number >= 0"),
     (["--retain-last", "0"], "--retain-last must be at least 1"),
     (["--min-files", "1"], "--min-files must be at least 2")],
)
def test_bad_maintain_values_are_clean_errors_naming_the_option(lake_env, monkeypatch, capsys, argv, error):
    monkeypatch.setattr(tb, "maintain", lambda *a, **kw: pytest.fail("must not run"))
    assert cli.main(["lake", "maintain", *argv, "--json"]) == 2
    assert error in json.loads(capsys.readouterr().out)["error"]


@pytest.mark.parametrize(
    ("argv", "error"),
    [(["migrate", "--kind", "rows"], "argument --kind: invalid choice: 'rows'"),
     (["maintain", "--retain-last", "two"], "argument --retain-last: invalid int value: 'two'"),
     ([], "the following arguments are required: {migrate,maintain}")],
)
def test_badly_typed_options_are_usage_errors(capsys, argv, error):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["lake", *argv])
    assert exit_.value.code == 2 and error in capsys.readouterr().err
