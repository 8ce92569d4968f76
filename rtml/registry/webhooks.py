"""Registry events, not polling: MLflow webhooks tell rtml the moment a version is tagged or aliased.

MLflow (3.x) posts a JSON body ``{"entity", "action", "timestamp", "data"}`` to each registered
webhook, with the headers ``X-MLflow-Delivery-Id``, ``X-MLflow-Timestamp`` (Unix seconds) and
``X-MLflow-Signature`` = ``v1,`` + base64(HMAC-SHA256(secret, "<delivery id>.<timestamp>.<body>")).
rtml registers one webhook (``register``, done by ``rtml stack up``) for two events, delivered to the
Airflow plugin's ``POST /rtml/hooks/mlflow``, which checks the signature (``verify_delivery``) and
hands the event to ``handle`` off the request path (``Dispatcher``):

- ``model_version_alias.created`` with alias ``champion`` on a version that is not servable (a gate
  failed or is unsigned, or nobody approved it: ``rtml.registry.signing.check_servable``), i.e. set by
  hand in the MLflow UI or API rather than by ``rtml approve``/``rollback``: the alias goes back to the
  version of the model's last promotion or rollback in the decision log (or is deleted when there is
  none) and the refusal is recorded in the log, saying who set what and why it was undone.
- ``model_version_tag.set`` of ``approval``: on the current challenger, the ``rtml_promote`` run
  waiting for it is woken at once (``rtml.registry.signals``; ``approval.by`` set after the decision
  wakes it too); the person's decision goes into the decision log the moment it is made (once;
  ``rtml.registry.promotion.record_observed_decision``), not when the promotion DAG next looks.

Only the standard library is imported at module level: the Airflow plugin imports this module.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rtml.settings import Settings

log = logging.getLogger("rtml.registry.webhooks")

ROUTE = "/rtml/hooks/mlflow"
NAME = "rtml"
EVENTS = ("model_version_tag.set", "model_version_alias.created")
SIGNATURE_HEADER, TIMESTAMP_HEADER, DELIVERY_HEADER = "X-MLflow-Signature", "X-MLflow-Timestamp", "X-MLflow-Delivery-Id"
MAX_BODY_BYTES = 256 * 1024  # MLflow's bodies are a few hundred bytes; more is not MLflow
MAX_DEPTH = 8  # the payload is two levels deep
FUTURE_SKEW = 60  # seconds a sender's clock may run ahead of ours


class WebhookError(ValueError):
    """A delivery that is refused; ``status`` is the HTTP answer (401: not from MLflow, 400: malformed)."""

    status = 400


class SignatureError(WebhookError):
    status = 401


class StaleDelivery(WebhookError):
    """A timestamp too old (a replay) or in the future: refused like a bad signature."""

    status = 401


def hook_url(settings: Settings) -> str:
    """Where MLflow delivers: the Airflow api-server, which serves the rtml plugin."""
    return settings.airflow_url.rstrip("/") + ROUTE


# --- verification -------------------------------------------------------------------------------
def sign(secret: str, delivery_id: str, timestamp: str, body: str) -> str:
    """The ``X-MLflow-Signature`` value MLflow sends (for tests and tools that post a delivery)."""
    mac = hmac.new(secret.encode(), f"{delivery_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def _header(headers: Mapping[str, str], name: str) -> str | None:
    # Starlette's headers are case-insensitive already; a plain dict (tests, tools) may not be.
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        value = next((v for k, v in headers.items() if str(k).lower() == lowered), None)
    return None if value is None else str(value)


def _depth(value: Any, limit: int, level: int = 0) -> None:
    if level > limit:
        raise WebhookError(f"payload nested deeper than {limit} levels")
    if isinstance(value, dict):
        for k, v in value.items():
            _depth(k, limit, level + 1)
            _depth(v, limit, level + 1)
    elif isinstance(value, list):
        for v in value:
            _depth(v, limit, level + 1)
    elif isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise WebhookError("payload has a string with a lone surrogate (not text)") from None


def verify_delivery(secret: str, headers: Mapping[str, str], body: bytes | str, now: float | None = None,
                    max_age: float = 300) -> dict[str, Any]:
    """The delivery's parsed payload, or ``WebhookError`` saying why it is refused.

    The signature is checked before the body is parsed (nothing unauthenticated is parsed), in
    constant time; the timestamp must be at most ``max_age`` seconds old (a captured delivery
    cannot be replayed later) and not in the future.
    """
    if not secret:
        raise SignatureError("no webhook secret configured: cannot authenticate deliveries")
    raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else bytes(body)
    if len(raw) > MAX_BODY_BYTES:
        raise WebhookError(f"body of {len(raw)} bytes is over the {MAX_BODY_BYTES}-byte limit")
    signature = _header(headers, SIGNATURE_HEADER)
    stamp = _header(headers, TIMESTAMP_HEADER)
    delivery = _header(headers, DELIVERY_HEADER)
    if not signature:
        raise SignatureError(f"missing {SIGNATURE_HEADER} header: not a signed MLflow delivery")
    if not stamp or not delivery:
        raise SignatureError(f"missing {TIMESTAMP_HEADER if not stamp else DELIVERY_HEADER} header")
    stamp = stamp.strip()
    if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= 12):
        raise SignatureError(f"{TIMESTAMP_HEADER} is not a Unix time in seconds: {stamp[:40]!r}")
    age = (time.time() if now is None else now) - int(stamp)
    if age > max_age:
        raise StaleDelivery(f"{TIMESTAMP_HEADER} is {age:.0f} s old (over {max_age:.0f} s): a replayed delivery?")
    if age < -FUTURE_SKEW:
        raise StaleDelivery(f"{TIMESTAMP_HEADER} is {-age:.0f} s in the future")
    try:
        text = raw.decode("utf-8")  # MLflow signs the text it sends (ASCII JSON)
    except UnicodeDecodeError:
        raise SignatureError("body is not UTF-8 text, so it cannot carry a valid signature") from None
    expected = sign(secret, delivery, stamp, text).encode()
    # Several "v1,<sig>" separated by spaces are allowed (a secret being rotated); every one is
    # compared, each in constant time.
    matched = False
    for candidate in signature.split():
        matched |= hmac.compare_digest(candidate.encode("utf-8", "replace"), expected)
    if not matched:
        for candidate in signature.split():
            _, _, b64 = candidate.partition(",")
            try:
                base64.b64decode(b64, validate=True)
            except (binascii.Error, ValueError):
                raise SignatureError(f"{SIGNATURE_HEADER} is not 'v1,<base64>'") from None
        raise SignatureError(f"{SIGNATURE_HEADER} does not match the body: not signed with this webhook's secret")
    try:
        payload = json.loads(text)
    except RecursionError:
        raise WebhookError("payload nested too deeply") from None
    except ValueError as err:
        raise WebhookError(f"body is not JSON: {err}") from None
    if not isinstance(payload, dict):
        raise WebhookError(f"payload must be a JSON object, not {type(payload).__name__}")
    _depth(payload, MAX_DEPTH)
    for field in ("entity", "action"):
        if not isinstance(payload.get(field), str):
            raise WebhookError(f"payload field {field!r} must be a string")
    if not isinstance(payload.get("data"), dict):
        raise WebhookError("payload field 'data' must be an object")
    return payload


# --- registration -------------------------------------------------------------------------------
def register(client: Any, url: str, secret: str, name: str = NAME) -> dict[str, Any]:
    """Create or update the one webhook called ``name`` (idempotent); extra ones of that name are deleted.

    The secret is always written: MLflow never returns it, so it cannot be compared.
    """
    mine = []
    token = None
    while True:
        page = client.list_webhooks(max_results=100, page_token=token)
        mine += [w for w in page if w.name == name]
        token = getattr(page, "token", None)
        if not token:
            break
    description = "rtml: champion guard and approvals into the decision log (rtml.registry.webhooks)"
    if mine:
        hook = client.update_webhook(mine[0].webhook_id, url=url, events=list(EVENTS), secret=secret,
                                     status="ACTIVE", description=description)
        for extra in mine[1:]:  # two concurrent `stack up`s: keep one, or every event arrives twice
            client.delete_webhook(extra.webhook_id)
        action = "updated"
    else:
        hook = client.create_webhook(name=name, url=url, events=list(EVENTS), secret=secret,
                                     description=description)
        action = "created"
    return {"action": action, "webhook_id": hook.webhook_id, "name": name, "url": url, "events": list(EVENTS)}


# --- decisions ----------------------------------------------------------------------------------
def _text(data: dict[str, Any], field: str) -> str:
    value = data.get(field)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise WebhookError(f"payload data field {field!r} must be a string, not {type(value).__name__}")
    value = str(value)
    if not value or len(value) > 1000:
        raise WebhookError(f"payload data field {field!r} must be 1..1000 characters")
    return value


def _revert_target(client: Any, name: str, refused: str, settings: Settings) -> tuple[str | None, str]:
    """Where champion goes back to: the version of the model's newest promotion or rollback in the
    decision log other than the refused one, if it is servable; else None (and why)."""
    from rtml.registry.audit import entries
    from rtml.registry.signing import NotServable, check_servable

    for e in reversed(entries(settings=settings)):
        if e.get("model") != name or e.get("action") not in ("promotion", "rollback"):
            continue
        version = str(e.get("version"))
        if version == refused:
            continue
        try:
            mv = client.get_model_version(name, version)
            # Only to a servable version: that change comes back as an event too, and must be a no-op.
            check_servable(name, version, mv.run_id, dict(mv.tags or {}), settings=settings)
        except NotServable as err:
            return None, f"the last champion rtml set (version {version}) is not servable either: {err}"
        except Exception as err:  # noqa: BLE001 - deleted version, registry hiccup: nothing to go back to
            return None, f"the last champion rtml set (version {version}) cannot be read: {err}"
        return version, ""
    return None, "the decision log has no promotion or rollback of this model"


def _guard_champion(payload: dict[str, Any], client: Any, settings: Settings) -> dict[str, Any]:
    from rtml.names import CHAMPION
    from rtml.registry.client import alias_version
    from rtml.registry.promotion import _log, audit, promotion_guard
    from rtml.registry.signing import NotServable, check_servable

    data = payload["data"]
    name, version = _text(data, "name"), _text(data, "version")
    base = {"event": "model_version_alias.created", "model": name, "version": version, "alias": CHAMPION}
    try:
        mv = client.get_model_version(name, version)
    except Exception as err:  # noqa: BLE001 - MLflow's "test" delivery names a model that does not exist
        return {**base, "action": "ignored", "reason": f"version not readable: {err}"[:500]}
    try:
        check_servable(name, version, mv.run_id, dict(mv.tags or {}), settings=settings)
        return {**base, "action": "none", "reason": "servable"}
    except NotServable as err:
        why, code = str(err).removeprefix(f"{name} version {version}: "), err.reason
    # One promotion, rollback or revert of a model at a time (promote holds this lease while it moves aliases).
    with promotion_guard(name, "champion revert", wait=60):
        if alias_version(client, name, CHAMPION) != version:  # moved on meanwhile (a promotion, a replay)
            return {**base, "action": "ignored", "reason": "champion no longer names this version"}
        target, note = _revert_target(client, name, version, settings)
        undo = f"reverted to version {target}" if target else f"champion alias deleted ({note})"
        reason = f"champion set outside rtml on version {version}: {why}; {undo}"
        out = {**base, "action": "reverted" if target else "deleted", "to": target, "reason": reason,
               "refused": code}
        try:
            # Recorded before the alias moves, as promote/rollback do; anchored on the refused version.
            entry = _log("refusal", name, version, client, reason=reason[:2000],
                         details={"via": "mlflow webhook", "refused": code, "reverted_to": target,
                                  "event_at": str(payload.get("timestamp", ""))[:64]})
            out["audit_seq"] = entry["seq"]
        except Exception as err:  # noqa: BLE001 - an unvetted champion is undone even if the lake is down
            log.exception("refusal of %s version %s not recorded", name, version)
            out["audit_error"] = f"{type(err).__name__}: {err}"[:500]
        if target:
            client.set_registered_model_alias(name, CHAMPION, target)
        else:
            client.delete_registered_model_alias(name, CHAMPION)
    try:
        audit(client, name, version, f"champion set outside rtml and undone: {why}; {undo}")
    except Exception:  # noqa: BLE001 - the description line is for people; the log has the record
        log.warning("description of %s version %s not updated", name, version, exc_info=True)
    return out


def _signal(name: str, version: str, tags: dict[str, Any], aliases: Any, settings: Settings) -> int | None:
    """Wake the ``rtml_promote`` run waiting on this version (rtml.registry.signals), when there can be one:
    the version is the current challenger and its ``approval`` tag holds a decision."""
    from rtml.names import CHALLENGER, normalize_decision
    from rtml.registry import signals

    if CHALLENGER not in list(aliases or []) or normalize_decision(tags.get("approval")) is None:
        return None
    return signals.publish(name, version, settings)


def _observe_approval(payload: dict[str, Any], client: Any, settings: Settings) -> dict[str, Any]:
    from rtml.names import normalize_decision
    from rtml.registry.audit import anchor
    from rtml.registry.promotion import record_observed_decision

    data = payload["data"]
    name, version = _text(data, "name"), _text(data, "version")
    key = data.get("key")
    decision = normalize_decision(data.get("value") if isinstance(data.get("value"), str) else None)
    base = {"event": "model_version_tag.set", "model": name, "version": version, "tag": key}
    if key == "approval" and decision is None:
        return {**base, "action": "ignored", "reason": f"approval={str(data.get('value'))[:40]!r} is not a decision"}
    try:
        mv = client.get_model_version(name, version)
        tags = dict(mv.tags or {})
    except Exception as err:  # noqa: BLE001
        return {**base, "action": "ignored", "reason": f"version not readable: {err}"[:500]}
    if key == "approval.by":  # the name after the decision: the waiting run may be looking for it
        listeners = _signal(name, version, tags, getattr(mv, "aliases", []), settings)
        return {**base, "action": "none" if listeners is None else "signalled", "listeners": listeners}
    if decision is None or normalize_decision(tags.get("approval")) != decision:  # changed since: that event decides
        return {**base, "action": "ignored", "reason": "superseded: the approval tag changed again"}
    # The waiting promotion first (it re-reads MLflow, so this carries no authority), then the record.
    listeners = _signal(name, version, tags, getattr(mv, "aliases", []), settings)
    entry = record_observed_decision(name, version, decision, by=tags.get("approval.by", ""),
                                     at=tags.get("approval.at", ""), via="MLflow tag (webhook)")
    if entry is None:
        return {**base, "action": "none", "decision": decision, "listeners": listeners,
                "reason": "already in the decision log"}
    anchor(client, name, version, entry)
    return {**base, "action": "recorded", "decision": decision, "audit_seq": entry["seq"], "listeners": listeners}


def handle(payload: dict[str, Any], client: Any, settings: Settings | None = None) -> dict[str, Any]:
    """Decide what an event means for rtml and do it; returns what was done (``action``)."""
    from rtml.names import CHAMPION

    if settings is None:
        from rtml.settings import get_settings

        settings = get_settings()
    data = payload.get("data")
    if not isinstance(data, dict):
        raise WebhookError("payload field 'data' must be an object")
    event = f"{payload.get('entity')}.{payload.get('action')}"
    if event == "model_version_alias.created" and data.get("alias") == CHAMPION:
        return _guard_champion(payload, client, settings)
    if event == "model_version_tag.set" and data.get("key") in ("approval", "approval.by"):
        return _observe_approval(payload, client, settings)
    return {"event": event[:100], "action": "ignored", "reason": "not an event rtml acts on"}


# --- off the request path -----------------------------------------------------------------------
class Dispatcher:
    """Runs ``handle`` in one background thread, in arrival order, so the receiver answers at once.

    A delivery id seen before is dropped (MLflow retries a delivery with the same id). An event is
    handled as soon as it arrives: an ``approval`` tag that ``rtml approve`` set is logged once
    because both sides check and append under the model's lease (``record_decision``,
    ``record_observed_decision``), not because of any delay here.
    """

    def __init__(self, work: Callable[[dict[str, Any]], dict[str, Any]], remember: int = 10_000) -> None:
        self.work = work
        self.remember = remember
        self.results: list[dict[str, Any]] = []  # the newest outcomes (for logs and tests)
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=10_000)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, payload: dict[str, Any], delivery_id: str = "") -> bool:
        """Queue an event; False when it is a repeat of a delivery already taken (or the queue is full)."""
        with self._lock:
            if delivery_id:
                if delivery_id in self._seen:
                    return False
                self._seen[delivery_id] = None
                while len(self._seen) > self.remember:
                    self._seen.popitem(last=False)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="rtml-webhooks", daemon=True)
                self._thread.start()
        try:
            self._queue.put_nowait(payload)
        except queue.Full:
            log.error("webhook queue full: event dropped (%s.%s)", payload.get("entity"), payload.get("action"))
            return False
        return True

    def _run(self) -> None:
        while True:
            payload = self._queue.get()
            try:
                if payload is None:
                    return
                try:
                    result = self.work(payload)
                except Exception as err:  # noqa: BLE001 - one bad event must not stop the others
                    log.exception("webhook event %s.%s failed", payload.get("entity"), payload.get("action"))
                    result = {"action": "error", "error": f"{type(err).__name__}: {err}"[:500]}
                if result.get("action") not in ("ignored", "none"):
                    log.warning("webhook: %s", result)
                self.results = [*self.results[-99:], result]
            finally:
                self._queue.task_done()

    def join(self, timeout: float = 10.0) -> bool:
        """Wait until every queued event is handled (tests); False on timeout."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def stop(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=5)
