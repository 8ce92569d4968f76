"""rtml: real-time machine learning orchestrated by Apache Airflow, tracked in MLflow."""

__version__ = "0.1.0"
