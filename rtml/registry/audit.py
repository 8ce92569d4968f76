"""The decision log: append-only and hash-chained, in the lake.

Every governance decision is one JSON object under ``_audit/decisions/<seq>.json`` in the lake's
store (``seq`` zero-padded, from 0 with no gaps): gate results, approvals, rejections, promotions,
rollbacks, the endpoint's reloads and refusals. Each entry names who (the authenticated MLflow
user when MLflow auth is on, else ``RTML_ACTOR``, else the OS user), when, what, which model and
version and from which version, and carries ``prev`` (the previous entry's hash) and ``hash``
(SHA-256 of its own canonical JSON without ``hash``). An entry is created only if its key does
not exist yet (S3 ``If-None-Match: *``; a hard link on a folder), so two writers cannot both
take a sequence number: the loser re-reads the head and retries.

``rtml audit verify`` walks the chain and reports any edited entry (its hash no longer matches),
any missing or extra sequence number (a gap) and any broken link. ``rtml audit show`` prints it.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import os
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rtml.settings import Settings
    from rtml.storage import ObjectStore

log = logging.getLogger("rtml.registry.audit")

PREFIX = "_audit/decisions"
ACTIONS = ("gate", "approval", "rejection", "promotion", "rollback", "reload", "refusal")
_SEQ_WIDTH = 12


class AuditError(RuntimeError):
    """The decision could not be recorded."""


def _settings(settings: Settings | None) -> Settings:
    from rtml.settings import get_settings

    return settings or get_settings()


def open_log_store(settings: Settings | None = None) -> ObjectStore:
    from rtml.storage import open_store

    s = _settings(settings)
    return open_store(s.lake_uri, s)


def actor(settings: Settings | None = None) -> tuple[str, str]:
    """(who, how we know): the MLflow user when MLflow auth is on, else the configured actor."""
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if user and os.environ.get("MLFLOW_TRACKING_PASSWORD"):
        return user, "mlflow-auth"
    s = _settings(settings)
    if s.actor:
        return s.actor, "configured"
    if user:  # a name MLflow did not authenticate (no password): recorded as a claim
        return user, "mlflow-username"
    return getpass.getuser(), "os-user"


def entry_hash(entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    # default=str as when the entry is written: a detail such as a datetime is stored as its text, and
    # without it the hash failed and the decision was not recorded at all.
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _key(seq: int) -> str:
    return f"{PREFIX}/{seq:0{_SEQ_WIDTH}d}.json"


def _seq_of(key: str) -> int | None:
    name = key.rsplit("/", 1)[-1]
    stem = name.removesuffix(".json")
    return int(stem) if name.endswith(".json") and stem.isdigit() and len(stem) == _SEQ_WIDTH else None


def _create(store: ObjectStore, key: str, data: bytes) -> bool:
    """Write ``key`` only if it does not exist; False when another writer has it already."""
    from rtml.storage import LocalStore, S3Store

    if isinstance(store, S3Store):
        from botocore.exceptions import ClientError

        try:
            store.client.put_object(Bucket=store.bucket, Key=store._key(key), Body=data, IfNoneMatch="*")
            return True
        except ClientError as err:
            code = str(err.response.get("Error", {}).get("Code", ""))
            status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
                return False
            raise
    if isinstance(store, LocalStore):
        path = store._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".tmp-{os.getpid()}-{time.monotonic_ns()}")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # atomic, and fails if the entry exists
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)
    if store.exists(key):  # any other store: best effort
        return False
    store.put(key, data)
    return True


def _head(store: ObjectStore) -> tuple[int, str]:
    """(next sequence number, hash of the last entry)."""
    seqs = sorted(s for s in (_seq_of(k) for k in store.list(PREFIX)) if s is not None)
    if not seqs:
        return 0, ""
    last = json.loads(store.get(_key(seqs[-1])))
    return seqs[-1] + 1, str(last.get("hash", ""))


def record(
    action: str,
    name: str,
    version: str | int | None,
    *,
    from_version: str | int | None = None,
    on_behalf_of: str | None = None,
    reason: str = "",
    details: dict[str, Any] | None = None,
    settings: Settings | None = None,
    store: ObjectStore | None = None,
) -> dict[str, Any]:
    """Append one decision to the log and return the entry (with its ``seq`` and ``hash``)."""
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {ACTIONS}, not {action!r}")
    s = _settings(settings)
    store = store or open_log_store(s)
    who, how = actor(s)
    base: dict[str, Any] = {
        "at": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "action": action,
        "model": str(name),
        "version": None if version is None else str(version),
        "from_version": None if from_version is None else str(from_version),
        "actor": who,
        "actor_source": how,
        "on_behalf_of": on_behalf_of if on_behalf_of and on_behalf_of != who else None,
        "reason": reason or "",
        "details": details or {},
    }
    last_err: Exception | None = None
    for attempt in range(50):
        try:
            seq, prev = _head(store)
            entry = {"seq": seq, "prev": prev, **base}
            entry["hash"] = entry_hash(entry)
            data = json.dumps(entry, sort_keys=True, ensure_ascii=True, default=str).encode()
            if _create(store, _key(seq), data):
                return entry
        except Exception as err:  # noqa: BLE001 - a store hiccup: retry a few times, then fail loudly
            last_err = err
            if attempt >= 4:
                break
        time.sleep(0.02 * (attempt + 1))
    raise AuditError(f"could not append the {action} of {name} version {version} to the decision log: {last_err!r}")


def try_record(action: str, name: str, version: str | int | None, **kw: Any) -> dict[str, Any] | None:
    """``record`` for callers that must go on when the lake is unreachable (it is logged)."""
    try:
        return record(action, name, version, **kw)
    except Exception:  # noqa: BLE001
        log.exception("decision log: the %s of %s version %s was not recorded", action, name, version)
        return None


READ_THREADS = 8  # parallel reads of the log's entries (S3 clients pool 10 connections)


def entries(store: ObjectStore | None = None, settings: Settings | None = None) -> list[dict[str, Any]]:
    """Every entry in sequence order (unparseable objects are skipped here; ``verify`` reports them)."""
    store = store or open_log_store(settings)
    keys = [key for key in store.list(PREFIX) if _seq_of(key) is not None]

    def read(key: str) -> dict[str, Any] | None:
        try:
            return json.loads(store.get(key))
        except (ValueError, KeyError):
            return None

    if len(keys) > READ_THREADS:
        # One object per entry: read them side by side (a promotion reads the log on its way to
        # the alias; one by one, that grew with the log by a round trip per entry).
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(READ_THREADS, thread_name_prefix="rtml-audit-read") as pool:
            read_all = list(pool.map(read, keys))
    else:
        read_all = [read(key) for key in keys]
    return sorted((e for e in read_all if e is not None), key=lambda e: e.get("seq", -1))


def for_version(name: str, version: str | int, store: ObjectStore | None = None,
                settings: Settings | None = None) -> list[dict[str, Any]]:
    v = str(version)
    return [e for e in entries(store, settings) if e.get("model") == name and v in (e.get("version"), e.get("from_version"))]


def verify(store: ObjectStore | None = None, settings: Settings | None = None,
           anchors: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Walk the chain: every entry unedited, sequence numbers 0..n-1 without gaps, links intact;
    with ``anchors`` (:func:`registry_anchors`), every entry they name is there, unchanged."""
    store = store or open_log_store(settings)
    problems: list[str] = []
    by_seq: dict[int, str] = {}
    readable: dict[int, dict[str, Any]] = {}
    for key in store.list(PREFIX):
        seq = _seq_of(key)
        if seq is None:
            problems.append(f"{key}: not a decision entry (unexpected object in the log)")
        else:
            by_seq[seq] = key
    n = max(by_seq) + 1 if by_seq else 0
    prev_hash: str | None = ""
    count = 0
    for seq in range(n):
        if seq not in by_seq:
            problems.append(f"entry {seq}: missing (gap in the log)")
            prev_hash = None  # the next link cannot be checked against a missing entry
            continue
        try:
            entry = json.loads(store.get(by_seq[seq]))
            if not isinstance(entry, dict):
                raise ValueError("not an object")
        except (ValueError, KeyError) as err:
            problems.append(f"entry {seq}: unreadable ({err})")
            prev_hash = None
            continue
        count += 1
        readable[seq] = entry
        if entry.get("seq") != seq:
            problems.append(f"entry {seq}: says it is entry {entry.get('seq')!r} (moved or renumbered)")
        if entry.get("hash") != entry_hash(entry):
            problems.append(f"entry {seq}: edited (its hash does not match its content)")
        if prev_hash is not None and entry.get("prev") != prev_hash:
            problems.append(f"entry {seq}: does not follow entry {seq - 1} (its 'prev' is not that entry's hash)")
        prev_hash = str(entry.get("hash", ""))
    here = log_location(store)
    mine = [a for a in anchors or [] if a.get("log") in (here, "", None)]  # other lakes' anchors: not ours
    if mine:
        problems.extend(check_anchors(mine, readable))
    ok = not problems
    return {
        "ok": ok,
        "entries": count,
        "anchors": None if anchors is None else len(mine),
        "head": {"seq": n - 1, "hash": prev_hash} if n else None,
        "problems": problems,
        "store": f"{store.uri}/{PREFIX}",
        "message": (f"decision log OK: {count} entries, chain intact"
                    + (f", {len(mine)} registry anchors found" if anchors is not None else "")
                    + f" ({store.uri}/{PREFIX})" if ok else
                    f"decision log BROKEN: {len(problems)} problem(s):\n  " + "\n  ".join(problems)),
    }


# --- anchors: the log's newest entries, named outside the lake -------------------------------------
# A log whose newest entries were deleted is still a valid chain. Each decision about a model
# version is therefore also named on that version in the MLflow registry (tag AUDIT_ANCHOR_TAG:
# "<seq>:<hash>@<log>", the log's location, as one registry may serve several lakes); ``verify``
# checks every anchor of its log, so a cut tail, or a tail cut and re-written, fails unless both
# the lake and the registry were edited. Entries after the newest
# anchor (the endpoint's reloads, which has no write access to the registry) are not covered.
def log_location(store: ObjectStore) -> str:
    return f"{store.uri}/{PREFIX}"


def anchor(client: Any, name: str, version: str | int | None, entry: dict[str, Any],
           store: ObjectStore | None = None, settings: Settings | None = None) -> bool:
    """Name ``entry`` (of the log in ``store``) on the model version it concerns; best effort."""
    from rtml.names import AUDIT_ANCHOR_TAG

    if version is None:
        return False
    try:
        where = log_location(store or open_log_store(settings))
        client.set_model_version_tag(name, str(version), AUDIT_ANCHOR_TAG, f"{entry['seq']}:{entry['hash']}@{where}")
        return True
    except Exception:  # noqa: BLE001 - the decision is recorded; only its witness is missing
        log.warning("decision %s not anchored on %s version %s", entry.get("seq"), name, version, exc_info=True)
        return False


def registry_anchors(client: Any) -> list[dict[str, Any]]:
    """Every anchor in the registry: ``{"model", "version", "seq", "hash", "log"}`` (malformed: seq None)."""
    from rtml.names import AUDIT_ANCHOR_TAG

    out: list[dict[str, Any]] = []
    token = None
    while True:
        page = client.search_model_versions(max_results=1000, page_token=token)
        for mv in page:
            value = (mv.tags or {}).get(AUDIT_ANCHOR_TAG)
            if value is None:
                continue
            named, _, where = str(value).partition("@")
            seq, _, digest = named.partition(":")
            out.append({"model": mv.name, "version": str(mv.version),
                        "seq": int(seq) if seq.isdigit() else None, "hash": digest, "log": where})
        token = getattr(page, "token", None)
        if not token:
            return out


def check_anchors(anchors: list[dict[str, Any]], by_seq: dict[int, dict[str, Any]]) -> list[str]:
    """The problems the anchors reveal in the log (``by_seq``: its readable entries)."""
    problems = []
    for a in anchors:
        where = f"{a['model']} version {a['version']}"
        if a["seq"] is None:
            problems.append(f"anchor on {where}: malformed ({a['hash']!r})")
            continue
        entry = by_seq.get(a["seq"])
        if entry is None:
            problems.append(f"anchor on {where}: names entry {a['seq']}, which the log does not have "
                            "(its newest entries were deleted?)")
        elif entry.get("hash") != a["hash"]:
            problems.append(f"anchor on {where}: entry {a['seq']} is not the entry it named (the log was re-written)")
        elif entry.get("model") != a["model"]:
            problems.append(f"anchor on {where}: entry {a['seq']} is about {entry.get('model')!r}")
    return problems


# --- model card ---------------------------------------------------------------------------------
def refresh_model_card(client: Any, name: str, version: str | int, settings: Settings | None = None) -> bool:
    """Re-render the version's model card (``evaluation/model_card.html``) with its decisions.

    Best effort: a version without an evaluation summary (not evaluated by rtml) has no card.
    """
    import tempfile
    from pathlib import Path

    try:
        import mlflow

        from rtml.names import EVAL_DIR, FILES
        from rtml.reports import carry_sections, model_card_html

        s = _settings(settings)
        mv = client.get_model_version(name, str(version))
        with tempfile.TemporaryDirectory(prefix="rtml-card-") as tmp:
            try:
                path = mlflow.artifacts.download_artifacts(
                    run_id=mv.run_id, artifact_path=f"{EVAL_DIR}/{FILES['summary']}", dst_path=tmp,
                    tracking_uri=s.mlflow_tracking_uri,
                )
            except Exception:  # noqa: BLE001 - no evaluation summary: nothing to refresh
                return False
            summary = json.loads(Path(path).read_text())
            summary["decisions"] = for_version(name, version, settings=s)
            card = Path(tmp) / FILES["model_card"]
            try:  # keep what monitoring attached (shadow traffic, live fairness)
                old = Path(client.download_artifacts(mv.run_id, f"{EVAL_DIR}/{FILES['model_card']}", tmp)).read_text()
            except Exception:  # noqa: BLE001 - no card yet: render a fresh one
                old = ""
            card.write_text(carry_sections(old, model_card_html(summary)))
            client.log_artifact(mv.run_id, str(card), EVAL_DIR)
        return True
    except Exception:  # noqa: BLE001
        log.warning("model card of %s version %s not refreshed", name, version, exc_info=True)
        return False
