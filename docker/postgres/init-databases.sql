-- One PostgreSQL server, two metadata databases: Airflow's and MLflow's (owned by POSTGRES_USER).
CREATE DATABASE airflow;
CREATE DATABASE mlflow;
