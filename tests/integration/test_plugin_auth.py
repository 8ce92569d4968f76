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
