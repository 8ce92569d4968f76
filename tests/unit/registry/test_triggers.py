"""What the approval wait reads from MLflow: a decision, a pending challenger, or a superseded version."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from rtml.registry.triggers import fetch_decision


def _read(tags: dict[str, str], aliases: list[str], status: int = 200) -> dict:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/2.0/mlflow/model-versions/get"
        assert dict(request.url.params) == {"name": "m", "version": "3"}
        if status != 200:
            return httpx.Response(status, json={"error_code": "RESOURCE_DOES_NOT_EXIST"})
        mv = {"tags": [{"key": k, "value": v} for k, v in tags.items()], "aliases": aliases}
        return httpx.Response(200, json={"model_version": mv})

    async def go() -> dict:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await fetch_decision(client, "http://mlflow", "m", "3")

    return asyncio.run(go())


@pytest.mark.parametrize(
    ("tags", "aliases", "status"),
    [
        ({}, ["challenger"], "pending"),
        ({"approval": "approved", "approval.by": "ann"}, ["challenger"], "approved"),
        ({"approval": " Rejected "}, ["challenger"], "rejected"),
        ({"approval": "maybe"}, ["challenger"], "pending"),
        # No decision and no longer the challenger: a newer version replaced it.
        ({}, [], "superseded"),
        ({"approval": "maybe"}, ["previous_champion"], "superseded"),
        # A decision stands even after the alias moved (promotion then judges it).
        ({"approval": "approved"}, [], "approved"),
    ],
)
def test_decision_pending_or_superseded(tags, aliases, status):
    got = _read(tags, aliases)
    assert got["status"] == status
    if status == "superseded":
        assert "no longer the challenger" in got["message"]


def test_a_deleted_version_is_missing():
    assert _read({}, [], status=404)["status"] == "missing"
