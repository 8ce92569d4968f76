#!/bin/sh
# PostgreSQL's first start (docker-entrypoint-initdb.d): one login role per service, owning only its
# database, which no other role may connect to; POSTGRES_USER (the superuser) is used by no service.
# The SQL is rtml.platform.access.compose_init_sql of COMPOSE_PG_ROLES (tests/unit/test_compose.py compares them).
# Runs once, on an empty data volume: an existing volume keeps its roles (create them by hand).
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v airflow_password="$AIRFLOW_DB_PASSWORD" -v mlflow_password="$MLFLOW_DB_PASSWORD" \
  -v catalog_password="$CATALOG_DB_PASSWORD" <<'SQL'
CREATE ROLE "airflow" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD :'airflow_password';
CREATE DATABASE "airflow" OWNER "airflow";
REVOKE ALL ON DATABASE "airflow" FROM PUBLIC;
CREATE ROLE "mlflow" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD :'mlflow_password';
CREATE DATABASE "mlflow" OWNER "mlflow";
REVOKE ALL ON DATABASE "mlflow" FROM PUBLIC;
CREATE ROLE "catalog" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD :'catalog_password';
CREATE DATABASE "catalog" OWNER "catalog";
REVOKE ALL ON DATABASE "catalog" FROM PUBLIC;
SQL
