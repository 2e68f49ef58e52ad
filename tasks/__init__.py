"""Plain functions, one stage per module; no Prefect here, so each can be tested alone."""
