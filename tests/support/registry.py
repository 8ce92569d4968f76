"""An in-memory stand-in for the MLflow registry calls that promotion and deployment make."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST


class NotFound(MlflowException, KeyError):
    """What MlflowClient raises for a missing version or alias (still a KeyError for older tests)."""

    def __init__(self, what: str) -> None:
        MlflowException.__init__(self, f"{what} not found", error_code=RESOURCE_DOES_NOT_EXIST)

    def __str__(self) -> str:
        return self.message


class FakeRegistry:
    """The MlflowClient calls promotion makes, on dicts; ``on_alias`` runs before an alias moves.

    Also the webhook calls (``create_webhook``, ``list_webhooks``, ``update_webhook``,
    ``delete_webhook``) on ``self.webhooks`` (id -> SimpleNamespace with the secret in clear).
    """

    def __init__(self, versions: dict[str, dict[str, str]], aliases: dict[str, str], name: str = "credit"):
        self.name = name
        self.tags = {v: dict(t) for v, t in versions.items()}
        self.descriptions = {v: "" for v in versions}
        self.aliases = dict(aliases)
        self.on_alias = lambda alias, version: None
        self.webhooks: dict[str, SimpleNamespace] = {}
        self._ids = itertools.count(1)

    def get_model_version(self, name, version):
        version = str(version)
        if name != self.name or version not in self.tags:
            raise NotFound(f"{name} version {version}")
        aliases = [a for a, v in self.aliases.items() if v == version]
        return SimpleNamespace(name=name, version=version, tags=dict(self.tags[version]), run_id=f"run-{version}",
                               description=self.descriptions[version], aliases=aliases)

    def get_model_version_by_alias(self, name, alias):
        if name != self.name or alias not in self.aliases:
            raise NotFound(f"{name} alias {alias}")
        return self.get_model_version(name, self.aliases[alias])

    def set_registered_model_alias(self, name, alias, version):
        self.on_alias(alias, str(version))
        self.aliases[alias] = str(version)

    def delete_registered_model_alias(self, name, alias):
        self.aliases.pop(alias, None)

    def set_model_version_tag(self, name, version, key, value):
        self.tags[str(version)][key] = str(value)

    def update_model_version(self, name, version, description=None):
        self.descriptions[str(version)] = description or ""

    def search_model_versions(self, max_results=None, page_token=None):
        return [self.get_model_version(self.name, v) for v in self.tags]

    def create_webhook(self, name, url, events, description=None, secret=None, status=None):
        hook = SimpleNamespace(webhook_id=f"wh-{next(self._ids)}", name=name, url=url, events=list(events),
                               description=description, secret=secret, status=status or "ACTIVE")
        self.webhooks[hook.webhook_id] = hook
        return hook

    def list_webhooks(self, max_results=None, page_token=None):
        return list(self.webhooks.values())

    def update_webhook(self, webhook_id, **changes):
        hook = self.webhooks[webhook_id]
        for k, v in changes.items():
            if v is not None:
                setattr(hook, k, list(v) if k == "events" else v)
        return hook

    def delete_webhook(self, webhook_id):
        del self.webhooks[webhook_id]


def local_governance(tmp_path, monkeypatch):
    """Settings with a local lake (the decision log, the promotion lease) under ``tmp_path``, and
    gate signatures and model cards switched off (they are tested in their own modules).

    A generator for a fixture: ``yield from local_governance(tmp_path, monkeypatch)``.
    """
    from rtml.registry import promotion
    from rtml.settings import get_settings

    monkeypatch.setenv("RTML_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RTML_STORAGE", "local")
    monkeypatch.setenv("RTML_ACTOR", "tester")
    monkeypatch.setenv("RTML_APPROVAL_SIGNAL_URL", "off")  # no Redis: the wake-up signal is tested on its own
    for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    get_settings(refresh=True)
    monkeypatch.setattr(promotion, "verify_signed", lambda *a, **k: None)
    monkeypatch.setattr(promotion, "_refresh_card", lambda *a, **k: None)
    yield
    monkeypatch.undo()
    get_settings(refresh=True)
