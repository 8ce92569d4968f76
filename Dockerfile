# The rtml image: Airflow (all components + Celery worker), the MLflow server and rtml serving.
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    AIRFLOW_HOME=/opt/airflow \
    RTML_HOME=/var/lib/rtml

# libgomp: scikit-learn/lightgbm-style OpenMP; libpq: psycopg2 at runtime.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 libpq5 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 50000 --gid 0 rtml \
    && mkdir -p /opt/airflow/logs /opt/airflow/auth /opt/rtml /var/lib/rtml /mlflow-auth \
    && chown -R rtml:0 /opt/airflow /opt/rtml /var/lib/rtml /mlflow-auth

WORKDIR /opt/rtml

# The lock first (cached layer), then the project without re-resolving dependencies.
COPY requirements.txt ./
RUN pip install -r requirements.txt

COPY pyproject.toml README.md ./
COPY rtml ./rtml
COPY dags ./dags
COPY plugins ./plugins
RUN pip install --no-deps . && rtml --help >/dev/null

USER rtml
EXPOSE 8080 5000 8000
CMD ["rtml", "--help"]
