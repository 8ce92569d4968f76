"""The rtml Airflow plugin's routes need an Airflow login, checked by the real api-server."""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.integration

ROUTES = ("/rtml/", "/rtml/api/models", "/rtml/api/decisions")


def test_plugin_routes_refuse_anonymous_and_forged_requests(airflow_settings):
    base = airflow_settings.airflow_url.rstrip("/")
    with httpx.Client(base_url=base, timeout=30) as anon:
        for route in ROUTES:
            r = anon.get(route)
            assert r.status_code == 401, (route, r.status_code, r.text[:200])
            assert "registered model versions" not in r.text and "model_versions" not in r.text
        # A token Airflow did not sign: refused, whether as a header or as the UI's cookie.
        forged = "eyJhbGciOiJIUzUxMiJ9.eyJzdWIiOiJhZG1pbiJ9.c2lnbmF0dXJl"
        for route in ROUTES:
            assert anon.get(route, headers={"Authorization": f"Bearer {forged}"}).status_code in (401, 403)
        anon.cookies.set("_token", forged)
        assert anon.get("/rtml/api/models").status_code in (401, 403)


def test_plugin_routes_answer_a_logged_in_user(airflow_api, airflow_settings):
    r = airflow_api.get("/rtml/api/models")
    assert r.status_code == 200, r.text[:300]
    assert isinstance(r.json()["model_versions"], list)
    r = airflow_api.get("/rtml/api/decisions")
    assert r.status_code == 200, r.text[:300]
    body = r.json()
    assert set(body) >= {"ok", "entries", "problems"}
    page = airflow_api.get("/rtml/")
    assert page.status_code == 200 and "registered model versions" in page.text
    assert "Decision log" in page.text
    # The Airflow UI's way: the same JWT in the session cookie (what a browser sends after login).
    token = airflow_api.http.headers["Authorization"].split(" ", 1)[1]
    with httpx.Client(base_url=airflow_settings.airflow_url.rstrip("/"), timeout=30) as browser:
        browser.cookies.set("_token", token)
        assert browser.get("/rtml/api/models").status_code == 200


def test_the_webhook_route_needs_a_signature_instead_of_a_login(airflow_settings):
    """MLflow cannot log in: POST /rtml/hooks/mlflow is open to it, authenticated by the HMAC signature."""
    import json
    import time

    from rtml.registry.webhooks import sign

    secret = airflow_settings.resolved_webhook_secret()
    base = airflow_settings.airflow_url.rstrip("/")
    body = json.dumps({"entity": "model_version", "action": "created", "timestamp": "", "data": {"name": "x"}})

    def headers(secret: str, ts: int, delivery: str = "auth-test") -> dict[str, str]:
        return {"Content-Type": "application/json", "X-MLflow-Delivery-Id": delivery, "X-MLflow-Timestamp": str(ts),
                "X-MLflow-Signature": sign(secret, delivery, str(ts), body)}

    with httpx.Client(base_url=base, timeout=30) as anon:
        now = int(time.time())
        r = anon.post("/rtml/hooks/mlflow", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 401 and "X-MLflow-Signature" in r.text, r.text[:200]
        r = anon.post("/rtml/hooks/mlflow", content=body, headers=headers("not-the-secret", now))
        assert r.status_code == 401 and "does not match" in r.text, r.text[:200]
        r = anon.post("/rtml/hooks/mlflow", content=body, headers=headers(secret, now - 3600))
        assert r.status_code in (400, 401) and "old" in r.text, r.text[:200]
        r = anon.post("/rtml/hooks/mlflow", content=body + " ", headers=headers(secret, now))
        assert r.status_code == 401, r.text[:200]  # the body was changed after signing
        # Signed with the secret, fresh: accepted without any Airflow login (an event rtml ignores).
        r = anon.post("/rtml/hooks/mlflow", content=body, headers=headers(secret, now, f"ok-{now}"))
        assert r.status_code == 202, r.text[:200]
