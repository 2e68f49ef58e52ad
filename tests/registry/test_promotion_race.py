"""Two processes promote at once on one real `mlflow server`, 20 rounds: in each, both saw the
same champion and both were told to promote. Exactly one moves `champion`; the other is told
the champion moved; the alias, the versions' tags and the history agree, and no move is lost."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import mlflow
import pytest
from conftest import free_port, start_mlflow_server
from mlflow import MlflowClient

from tasks.registry import history, lease

pytestmark = pytest.mark.slow

MODEL = "raced-classifier"
ROUNDS = 20


def contender(url: str, me: int, barrier, results) -> None:
    """One process of the race: in round r, promote version 2r + me + 1 over the champion it saw."""
    mlflow.set_tracking_uri(url)
    mlflow.set_registry_uri(url)
    from tasks.promotion.promote import place_aliases
    from tasks.registry import versions

    for r in range(ROUNDS):
        mine = str(2 * r + me + 1)
        saw = versions.champion_version(MODEL)  # what it was evaluated against
        barrier.wait()
        aliases, moved_to = place_aliases(MODEL, mine, True, True, saw, f"round {r} by {me}")
        results.put((r, me, mine, saw, aliases, moved_to))
        barrier.wait()  # the round ends for both before the next one reads the champion


@pytest.fixture
def server(tmp_path):
    port = free_port()
    process = start_mlflow_server(tmp_path, port)
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    process.wait(timeout=30)


def test_two_racing_promotions_agree_every_time(server, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    mlflow.set_tracking_uri(server)
    mlflow.set_registry_uri(server)  # an earlier test in this process may have set another
    client = MlflowClient(tracking_uri=server, registry_uri=server)  # no state an earlier test left
    client.create_registered_model(MODEL)
    run = client.create_run(client.create_experiment("race"))
    (tmp_path / "weights.txt").write_text("a model")
    client.log_artifact(run.info.run_id, str(tmp_path / "weights.txt"))
    client.set_terminated(run.info.run_id)
    for _ in range(2 * ROUNDS):
        client.create_model_version(MODEL, f"runs:/{run.info.run_id}/weights.txt", run_id=run.info.run_id)

    # spawned processes start from this sys.path, where a loaded pyfunc of an earlier test may
    # have put its own copy of tasks/ first: this checkout goes first
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2]))
    spawn = multiprocessing.get_context("spawn")
    barrier, results = spawn.Barrier(2), spawn.Queue()
    racers = [spawn.Process(target=contender, args=(server, me, barrier, results)) for me in (0, 1)]
    for racer in racers:
        racer.start()
    outcomes = [results.get(timeout=600) for _ in range(2 * ROUNDS)]
    for racer in racers:
        racer.join(timeout=60)
        assert racer.exitcode == 0

    champion = None
    winners = []
    for r in range(ROUNDS):
        pair = sorted((o for o in outcomes if o[0] == r), key=lambda o: o[1])
        assert [o[3] for o in pair] == [champion, champion]  # both saw the same champion
        won = [o for o in pair if "champion" in o[4]]
        lost = [o for o in pair if "champion" not in o[4]]
        assert len(won) == 1 and len(lost) == 1, pair  # exactly one promotion per round
        assert lost[0][5] == won[0][2]  # the other was told who holds it now
        assert set(won[0][4]) == {"challenger", "champion"} and lost[0][4] == ["challenger"]
        champion = won[0][2]
        winners.append(champion)

    assert client.get_model_version_by_alias(MODEL, "champion").version == winners[-1]
    moves = history.moves(MODEL)
    assert [m.number for m in moves] == list(range(1, ROUNDS + 1))  # none lost, none doubled
    assert [m.to_version for m in moves] == winners
    assert [m.from_version for m in moves] == [None, *winners[:-1]]
    for version in range(1, 2 * ROUNDS + 1):
        tags = client.get_model_version(MODEL, str(version)).tags
        assert ("champion_since" in tags) == (str(version) in winners)
    model = client.get_registered_model(MODEL)
    assert all(json.loads(v)["by"] == "gate" for k, v in model.tags.items() if k.startswith(history.PREFIX))
    assert not client.search_registered_models(f"name = '{MODEL}{lease.SUFFIX}'")  # the lock is released
