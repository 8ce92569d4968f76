"""The model registry (MLflow) and the decisions taken on it.

- ``client``: the one MLflow client factory, alias lookup;
- ``signing``: Ed25519 signatures over a version's gate results, checked before promotion and serving;
- ``audit``: the append-only, hash-chained decision log in the lake;
- ``promotion``: approve, reject, promote, roll back (only gated, signed, approved versions);
- ``triggers``: the Airflow trigger that waits, deferred, for a person's approval.
"""
