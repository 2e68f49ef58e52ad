"""Prefect flows: they wire the stages in `flows.stages` together and hold no model code."""
