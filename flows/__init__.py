"""Prefect flows: they wire the stages (`flows.stages`) together and record what happened;
every decision and all model code live in `tasks/`."""
