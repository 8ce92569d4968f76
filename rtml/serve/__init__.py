"""``rtml serve``: the real-time scoring endpoint (an ASGI app under uvicorn).

Modules: ``validation`` (request bodies, MLflow's scoring protocol), ``model`` (a loaded version),
``fastpath`` (the numpy replay of the pipeline), ``source`` (the registry, the governance and smoke
checks), ``predlog`` (the prediction log), ``server`` (queue, micro-batching, hot swap, metrics),
``app`` (routes, auth), ``client`` (reload, wait, live smoke check). The verbs are in
:mod:`rtml.cli.serve`.

It serves ``models:/NAME@champion`` from the MLflow registry and follows the alias: a poller (and
``POST /admin/reload``) loads a new champion in a background thread, smoke-checks it on stored
sample rows, then swaps one reference, so requests already in a model call finish on the old model
and no request fails during a swap. A version that fails to load or fails the smoke check is never
swapped in; the failure is reported by ``GET /v1/model``.

Speed comes from grouping concurrent requests into one model call (adaptive micro-batching: a
batch waits at most ``max_wait_ms`` for about as many rows as the previous batch had), from
building one DataFrame per micro-batch instead of one per request, and from orjson. Every answered
prediction is buffered and written off the request path, in small Parquet batches with manifests,
to the lake (kind ``predictions``); scores of the ``challenger`` on the same traffic go to kind
``shadow``. Both buffers are flushed on a clean shutdown (SIGTERM).

No request can wedge it: every string of a body is checked to be encodable before it is
accepted (a 4xx names the field), the request queue and the prediction-log buffer are bounded
(over the bound: 503 with ``Retry-After``), a model call that hangs fails its requests after
``model_timeout_seconds`` (and ``/ready`` answers 503 until it returns), a micro-batch whose model
call fails is re-scored request by request so one bad record fails only its own request, and a
row the prediction log cannot write goes to a dead letter (the lake's ``quarantine/`` area), never
back into the buffer.

Routes: ``POST /v1/predict``, ``POST /invocations`` (MLflow's scoring protocol, answered like
``mlflow models serve``) and ``POST /admin/reload`` need ``Authorization: Bearer <token>``;
``GET /health``, ``/ready``, ``/metrics`` (and MLflow's ``/ping``, ``/version``) are open;
``GET /v1/model`` needs the token too.
"""
