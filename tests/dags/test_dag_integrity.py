"""DAG integrity: every file in dags/ imports cleanly, fast, without heavy modules, and documents itself.

Each file is imported in a fresh interpreter (a subprocess) so one file's imports cannot hide
another's, and so the measured time is that of a cold import of the file itself (Airflow's SDK is
imported first: it is loaded in every Airflow process anyway).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[2] / "dags"
DAG_FILES = sorted(p for p in DAGS.glob("*.py") if not p.name.startswith("_"))
HEAVY = ("mlflow", "sklearn", "evidently", "pandas", "fairlearn", "scipy", "pyarrow")
MAX_IMPORT_SECONDS = 1.0

_PROBE = r"""
import importlib.util, json, sys, time
import airflow.sdk  # warm: every Airflow process has it loaded
from airflow.sdk import DAG
from airflow.sdk.definitions._internal.contextmanager import DagContext
path = sys.argv[1]
before = set(sys.modules)
# As Airflow's importer does: DAGs built by a @dag call are auto-registered for this module.
DagContext.current_autoregister_module_name = "dag_under_test"
t0 = time.perf_counter()
spec = importlib.util.spec_from_file_location("dag_under_test", path)
module = importlib.util.module_from_spec(spec)
sys.modules["dag_under_test"] = module
spec.loader.exec_module(module)
seconds = time.perf_counter() - t0
found = {id(d): d for d in vars(module).values() if isinstance(d, DAG)}
found.update({id(d): d for d, _ in DagContext.autoregistered_dags})
heavy = sorted({m.split(".")[0] for m in set(sys.modules) - before} & set(sys.argv[2].split(",")))
dags = [
    {"dag_id": d.dag_id, "doc_md": d.doc_md or "", "description": d.description or "", "tags": sorted(d.tags or [])}
    for d in found.values()
]
print(json.dumps({"seconds": seconds, "heavy": heavy, "dags": dags, "module_doc": module.__doc__ or ""}))
"""

_DAGBAG = r"""
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
print(json.dumps({
    "import_errors": {k: v for k, v in bag.import_errors.items()},
    "dags": {d: {"fileloc": bag.dags[d].fileloc, "tags": sorted(bag.dags[d].tags or [])} for d in bag.dags},
}))
"""


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    # A throwaway Airflow home: parsing must not need the stack, nor touch ~/airflow.
    env["AIRFLOW_HOME"] = str(tmp_path / "airflow")
    env["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    env["AIRFLOW__CORE__DAGS_FOLDER"] = str(DAGS)
    return env


def _run(code: str, args: list[str], tmp_path: Path) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=_env(tmp_path), timeout=180
    )
    assert result.returncode == 0, f"import failed:\n{result.stderr[-4000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_there_are_dag_files():
    assert any(p.name == "rtml_healthcheck.py" for p in DAG_FILES)


@pytest.mark.parametrize("path", DAG_FILES, ids=[p.name for p in DAG_FILES])
def test_dag_file_imports_fast_and_light(path, tmp_path):
    info = _run(_PROBE, [str(path), ",".join(HEAVY)], tmp_path)
    assert info["dags"], f"{path.name} defines no DAG at module level"
    assert not info["heavy"], f"{path.name} imports heavy modules at module level: {info['heavy']}"
    assert info["seconds"] < MAX_IMPORT_SECONDS, f"{path.name} took {info['seconds']:.2f}s to import"
    for dag in info["dags"]:
        assert dag["dag_id"].startswith("rtml_"), dag["dag_id"]
        doc = dag["doc_md"] or dag["description"] or info["module_doc"]
        assert len(doc.strip()) > 40, f"{dag['dag_id']} has no real documentation for the UI"
        assert dag["doc_md"], f"{dag['dag_id']} has no doc_md (the text shown in the Airflow UI)"
        assert dag["tags"], f"{dag['dag_id']} has no tags"


def test_dagbag_has_no_import_errors(tmp_path):
    info = _run(_DAGBAG, [str(DAGS)], tmp_path)
    assert info["import_errors"] == {}, json.dumps(info["import_errors"], indent=2)[:4000]
    assert "rtml_healthcheck" in info["dags"]
    ids = list(info["dags"])
    assert len(ids) == len(set(ids))
    for dag_id, dag in info["dags"].items():
        assert Path(dag["fileloc"]).parent == DAGS, dag_id
        assert "rtml" in dag["tags"], f"{dag_id} should carry the 'rtml' tag"
