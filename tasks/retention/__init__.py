"""Retention: what a project keeps as it retrains for a year, and `transferops gc`, which deletes
the rest (params section `retention`; the retrain flow runs it after each round).

- `keep`: which registered versions and MLflow runs are kept, and what they need (the cached
  results their stages used, their data versions, the versions they started from);
- `files`: what that leaves to delete on disk, and DVC's cache (`dvc gc`, scoped to keep
  every commit's, the workspace's and the kept versions' data);
- `sweep`: the whole pass, dry or real, with what it freed, one line per kind.
"""
