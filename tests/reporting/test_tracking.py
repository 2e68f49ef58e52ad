import mlflow

from tasks.reporting.tracking import configure, flatten


def test_configure_follows_the_environment_not_its_own_earlier_choice(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    configure(tmp_path / "a")
    configure(tmp_path / "b")  # MLflow exported a's URI to the environment; b must still win
    assert mlflow.get_tracking_uri() == f"sqlite:///{tmp_path / 'b' / 'mlflow.db'}"
    assert mlflow.get_registry_uri() == mlflow.get_tracking_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'user.db'}")
    configure(tmp_path / "c")
    configure(tmp_path / "d")  # the user's URI stays the user's on every later call
    assert mlflow.get_tracking_uri() == f"sqlite:///{tmp_path / 'user.db'}"
    assert mlflow.get_registry_uri() == mlflow.get_tracking_uri()
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()


def test_flatten_nests_keys_and_serialises_lists():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": "x"}) == {"a.b": 1, "a.c": "[1, 2]", "d": "x"}
