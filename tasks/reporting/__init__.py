"""Reporting: what a run shows people. The run summary (Markdown, the MLflow description and
Prefect artifact), DVC metrics files, MLflow tracking set-up and run bookkeeping. The top
package: may import any other, none imports it."""
