"""Texts through the same pipeline, end to end: BBC News articles as `.txt` class folders, the real
MiniLM weights, Prefect, Great Expectations, MLflow and TensorFlow, through the command line;
the registered version served by its own pyfunc with `{"text": ...}` rows. 24 articles a class
and a 64-token window keep it to a couple of minutes on 2 cores."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from conftest import clear_mlflow_env, sets

from flows.cli import main
from tasks.data import bbc_news
from tasks.registry.versions import load_pyfunc

pytestmark = pytest.mark.slow

MODEL = "transferops-classifier"
PER_CLASS = 24
TEXTS = sets({"texts.window": 64, "texts.windows": 2, "finetune.head_epochs": 30})
CLASSES = ["business", "entertainment", "politics", "sports", "tech"]


def news_folder(folder: Path, per_class: int, skip: int = 0) -> Path:
    """`per_class` BBC News articles a class (after the first `skip`), as <class>/<name>.txt."""
    every = folder.parent / f".{folder.name}-all"
    bbc_news.write_bbc_news(every)
    for label in sorted(p.name for p in every.iterdir()):
        (folder / label).mkdir(parents=True)
        for article in sorted((every / label).iterdir())[skip : skip + per_class]:
            shutil.copyfile(article, folder / label / article.name)
    shutil.rmtree(every)
    return folder


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_harness):
    root = tmp_path_factory.mktemp("texts")
    news_folder(root / "data" / "raw", PER_CLASS)
    args = ["--root", str(root), *TEXTS]
    with pytest.MonkeyPatch.context() as mp:
        clear_mlflow_env(mp)
        assert main([*args, "train"]) == 0  # data.modality: auto finds the .txt class folders
        yield root, args


def test_a_text_folder_trains_validates_and_registers_minilm(project):
    root, _ = project
    summary = json.loads((root / "reports" / "train.json").read_text())
    assert summary["backbone"] == "minilm:all-MiniLM-L6-v2"
    assert sum(summary["examples"].values()) == PER_CLASS * len(summary["classes"])
    assert summary["registered"]["version"] == "1"
    assert summary["test"]["accuracy"] >= 0.7, summary["test"]  # 5 topics; chance is 0.2
    # MiniLM's head averaged with TF-IDF's (texts.fuse_raw): the served model, export and drift see both
    assert "with the raw-input baseline (search.fuse_raw)" in summary["strategy"], summary["strategy"]
    model = load_pyfunc(f"models:/{MODEL}/1")
    meta = model.unwrap_python_model().meta
    assert (meta["modality"], meta["column"], meta["window"], meta["windows"]) == ("texts", "text", 64, 2)
    # the flow's own run: the headline, to sort and compare runs of either modality by
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow' / 'mlflow.db'}")
    parent = mlflow.get_run(summary["mlflow_run_id"]).data
    assert parent.metrics["test_accuracy"] == summary["test"]["accuracy"]
    assert parent.metrics["test_macro_f1"] == summary["test"]["macro_f1"]
    assert (parent.tags["modality"], parent.tags["gate"]) == ("texts", "promoted")
    version = mlflow.MlflowClient().get_model_version(MODEL, "1")
    assert version.tags["modality"] == "texts" and version.tags["data_version"] == summary["data_version"]
    assert version.tags["serve.runtime"] == "onnx", version.tags["serve.runtime_reason"]
    assert meta["runtime"] == "onnx"  # the served pyfunc tokenizes and runs the ONNX export


def test_the_served_text_model_answers_each_row(project):
    """A string gets a label; null, empty, whitespace, a number and a NUL get their own error."""
    model = load_pyfunc(f"models:/{MODEL}/1")
    rows = [
        "The prime minister faces a vote in parliament on the election budget.",
        None,
        "",
        "   ",
        7,
        "nul\x00byte",
        "The champions won the cup final after extra time; the striker scored twice.",
    ]
    out = model.predict(pd.DataFrame({"text": rows}))
    assert list(out.columns[:2]) == ["label", "confidence"] and "error" in out.columns
    assert out["error"].tolist()[1:6] == [
        "expected a text (a string), got null",
        "empty text (0 bytes)",
        "empty text (nothing but whitespace)",
        "expected a text (a string), got int",
        "NUL at character 3 (a binary file, or text pasted with control codes)",
    ]
    good = out.iloc[[0, 6]]
    assert good["error"].isna().all() and set(good["label"]) <= set(CLASSES)
    assert good[[f"p:{c}" for c in CLASSES]].sum(axis=1).round(4).tolist() == [1.0, 1.0]
    assert (good["label"].tolist(), out["label"].iloc[1:6].isna().all()) == (["politics", "sports"], True)


def test_predict_labels_a_folder_of_texts(project, tmp_path, capsys):
    _, args = project
    folder = news_folder(tmp_path / "unseen", 2, skip=PER_CLASS)
    (folder / "tech" / "broken.txt").write_bytes(b"caf\xe9 latin-1")
    out = tmp_path / "labels.parquet"
    assert main([*args, "predict", str(folder), "--out", str(out)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith(f"wrote {2 * len(CLASSES) + 1} rows to {out}")
    rows = pd.read_parquet(out)
    broken = rows[rows["path"].str.endswith("broken.txt")].iloc[0]
    assert broken["error"] == "not UTF-8 at byte 3 (save the file as UTF-8)"
    good = rows[rows["error"].isna()]
    truth = good["path"].map(lambda p: Path(p).parent.name)
    assert len(good) == 2 * len(CLASSES) and (good["label"] == truth).mean() >= 0.7


def test_predict_labels_each_row_of_a_table(project, tmp_path):
    _, args = project
    table = tmp_path / "unseen.jsonl"
    lines = [{"text": "The striker scored twice in the cup final."}, {"text": 42}, {"id": 3}]
    table.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    out = tmp_path / "labels.csv"
    assert main([*args, "predict", str(table), "--out", str(out)]) == 0
    rows = pd.read_csv(out)
    assert rows["path"].tolist() == [f"{table}:{n}" for n in (1, 2, 3)]
    assert rows["label"].iloc[0] == "sports" and pd.isna(rows["error"].iloc[0])
    assert rows["error"].iloc[1:].tolist() == [
        "expected a text (a string), got int",
        "expected a text (a string), got null",
    ]


def test_export_to_onnx_ships_the_tokenizer_and_matches_keras(project, capsys):
    """The ONNX export of a text version, checked on its test split in onnxruntime, with the
    tokenizer beside it and named in its JSON; the same token ids give Keras' probabilities."""
    import onnxruntime as ort

    from tasks.modality import text_rows, tokens

    root, args = project
    capsys.readouterr()
    assert main([*args, "export", "1", "--format", "onnx"]) == 0
    said = capsys.readouterr().out.splitlines()
    folder = root / ".transferops" / "exports" / MODEL / "v1"
    assert said[1].startswith(f"wrote {folder / 'model.onnx'}: ") and "agreement with Keras 100" in said[1]
    meta = json.loads((folder / "model.onnx.json").read_text())
    assert (meta["modality"], meta["window"], meta["windows"]) == ("texts", 64, 2)
    assert meta["tokenizer"] == "tokenizer.json"
    shipped = folder / meta["tokenizer"]
    assert shipped.read_bytes() == tokens.tokenizer_path().read_bytes()
    texts = ["Shares fell as the bank reported a loss.", "A new film won the award for best actor."]
    ids = text_rows.pad(text_rows.ids(texts, str(shipped), meta["window"], meta["windows"]))
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    exported = session.run(None, {session.get_inputs()[0].name: ids})[0]
    keras_side = load_pyfunc(f"models:/{MODEL}/1").unwrap_python_model().model.predict(ids, verbose=0)
    assert abs(exported - keras_side).max() <= meta["parity"]["max_abs_difference"] + 1e-5


def test_reproduce_retrains_a_text_version_to_the_same_scores(project, capsys):
    root, args = project
    capsys.readouterr()
    assert main([*args, "reproduce", "1"]) == 0
    assert "verdict       match (tolerance 0)" in capsys.readouterr().out
    report = json.loads((root / "reports" / "reproduce.json").read_text())
    assert report["reproduction"]["new"] == report["reproduction"]["recorded"]


def test_distill_a_text_version_into_a_student(project):
    """The fixed recipe on the teacher's soft targets: the student is MiniLM again, its top
    layers fine-tuned on the streamed tokens."""
    root, args = project
    # one epoch of the top layers: the plumbing, not the score; served by Keras (MiniLM's ONNX
    # check costs about 40 s, tested at the first registration above)
    one_epoch = sets({"finetune.finetune_epochs": 1, "register.serve_runtime": "keras"})
    assert main([*args, *one_epoch, "distill", "1", "--student", "minilm:all-MiniLM-L6-v2"]) == 0
    summary = json.loads((root / "reports" / "distill.json").read_text())
    version = mlflow.MlflowClient().get_model_version(MODEL, summary["registered"]["version"])
    assert version.tags["distilled_from"] == f"{MODEL}/1" and version.tags["modality"] == "texts"
    assert summary["test"]["accuracy"] >= 0.6, summary["test"]


def test_retrain_on_a_table_measures_drift_on_embeddings_and_gc_keeps_the_champion(project):
    """The folder's articles and new ones, as one CSV table (text, label): staged as class
    folders, versioned by the table's md5."""
    root, args = project
    news_folder(root / "data" / "more", 6, skip=PER_CLASS)
    rows = [
        {"text": article.read_text(), "label": label.name}
        for folder in ("raw", "more")
        for label in sorted((root / "data" / folder).iterdir())
        for article in sorted(label.iterdir())
    ]
    table = root / "data" / "news.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    assert main([*args, "--set", "register.serve_runtime=keras", "retrain", "--data", str(table)]) == 0
    report = json.loads((root / "reports" / "retrain.json").read_text())
    assert report["drift"] is not None and 0 <= report["drift"]["p_value"] <= 1, report["drift"]
    assert sum(report["examples"].values()) == (PER_CLASS + 6) * len(CLASSES)
    assert report["data_version"] == hashlib.md5(table.read_bytes()).hexdigest()
    assert main([*args, "gc"]) == 0
    champion = mlflow.MlflowClient().get_model_version_by_alias(MODEL, "champion")
    assert (
        load_pyfunc(f"models:/{MODEL}/{champion.version}")
        .predict(pd.DataFrame({"text": ["Stocks rose."]}))["error"]
        .isna()
        .all()
    )
