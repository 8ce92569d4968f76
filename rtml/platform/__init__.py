"""The platform under the loop, run natively: the local stack of services (SeaweedFS, MLflow,
Airflow, the serving endpoint) and its supervisor, the services' health checks, and the client of
Airflow's REST API. Lowest layer but settings: nothing here imports a stage of the loop."""
