"""The stages of every flow, one module each, named after the stage: each holds the stage's
cached compute half (a Prefect task calling one `tasks/` function) and its logging half (what
the stage shows in MLflow, and the one line it says). `flowrun` holds what they share (the
MLflow parent run, `run_stage`, `publish`), `caching` how a stage's result is reused. No
decisions here: each lives in the `tasks/` module named in the call."""
