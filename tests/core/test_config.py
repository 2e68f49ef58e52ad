from pathlib import Path

import pytest

from flows.cli import build_parser, main, parse_overrides, resolve_params
from tasks.core.config import Candidate, ConfigError, Params, load_params

ROOT = Path(__file__).resolve().parents[2]


def test_params_yaml_matches_embedded_defaults():
    assert load_params(ROOT / "params.yaml") == Params()


def test_no_path_means_defaults_never_the_current_folder(tmp_path, monkeypatch):
    (tmp_path / "params.yaml").write_text("finetune:\n  head_epochs: 3\n")
    monkeypatch.chdir(tmp_path)
    assert load_params() == Params()


def test_a_root_without_params_uses_defaults_not_another_folder(tmp_path, monkeypatch, capsys):
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    (elsewhere / "params.yaml").write_text("finetune:\n  head_epochs: 3\n")
    monkeypatch.chdir(elsewhere)
    root = tmp_path / "project"
    root.mkdir()
    assert resolve_params(root, None, []) == Params()
    assert f"no params.yaml in {root}; using the built-in defaults" in capsys.readouterr().err


def test_a_missing_params_file_is_an_error_naming_it(tmp_path, capsys):
    assert main(["--root", str(tmp_path), "--params", "missing.yaml", "status"]) == 2
    assert f"{tmp_path / 'missing.yaml'}: params file not found" in capsys.readouterr().err


def test_overrides_apply_on_top_of_the_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("finetune:\n  head_epochs: 3\n")
    params = load_params(path, parse_overrides(["finetune.patience=1", "register.min_delta=0.05"]))
    assert params.finetune.head_epochs == 3
    assert params.finetune.patience == 1
    assert params.register.min_delta == 0.05


def test_params_are_frozen_and_hashable():
    params = Params()
    with pytest.raises(ValueError):
        params.finetune.head_epochs = 2  # type: ignore[misc]
    assert hash(params) == hash(Params())


def test_set_goes_before_or_after_the_subcommand(tmp_path):
    args = build_parser().parse_args(
        ["--set", "finetune.patience=2", "train", "--set", "finetune.head_epochs=1", "--root", str(tmp_path)]
    )
    params = resolve_params(args.root_after, args.params_after, args.set_before + args.set_after)
    assert (params.finetune.patience, params.finetune.head_epochs) == (2, 1)


def test_candidates_accept_strings_and_mappings(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(
        "select:\n  candidates:\n    - file:/m.keras\n    - {uri: keras:MobileNetV3Small, weights: none}\n"
    )
    assert load_params(path).images.candidates == (
        Candidate(uri="file:/m.keras"),
        Candidate(uri="keras:MobileNetV3Small", weights="none"),
    )


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("finetune:\n  head_epoch: 3\n", "finetune.head_epoch: unknown key"),
        ("finetune:\n  head_epochs: many\n", "finetune.head_epochs: Input should be a valid integer"),
        ("nonsense: {}\n", "nonsense: unknown key"),
        ("finetune: [1, 2]\n", "finetune: Input should be a valid dictionary"),
        ("a: [\n", "not valid YAML"),
        ("[1, 2]\n", "top level must be a mapping"),
        (
            "finetune:\n  head_epochs: -1\n",
            "finetune.head_epochs: Input should be greater than or equal to 0",
        ),
        ("split:\n  test_fraction: 2\n", "split.test_fraction: Input should be less than 1 (got 2)"),
        ("split:\n  val_fraction: 0.5\n  test_fraction: 0.5\n", "split: val_fraction + test_fraction"),
        ("finetune:\n  batch_size: 0\n", "finetune.batch_size: Input should be greater than or equal to 1"),
        ("select:\n  candidates: []\n", "images.candidates: "),
        ("select:\n  candidates: [hub:x]\n", "images.candidates.0.uri: a candidate is registry:"),
        ("register:\n  metric: loss\n", "register.metric: String should match pattern"),
        (
            "finetune:\n  distill_unlabelled: photos\n",
            "distill_unlabelled needs distill_from or search.distill",
        ),
        (  # the fixed recipe without a teacher: nothing would learn from the transfer set
            "search:\n  enabled: false\n  distill_ensemble: true\nfinetune:\n  distill_unlabelled: photos\n",
            "distill_unlabelled needs distill_from or search.distill",
        ),
    ],
)
def test_bad_params_name_the_file_and_the_key(tmp_path, text, fragment):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert str(err.value).startswith(str(path))
    assert fragment in str(err.value)


def test_a_bad_override_is_named_as_coming_from_set(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("finetune:\n  patience: 0\n")
    with pytest.raises(ConfigError) as err:
        load_params(path, parse_overrides(["finetune.head_epochs=-1"]))
    message = str(err.value)
    assert "--set finetune.head_epochs: Input should be greater than or equal to 0 (got -1)" in message
    assert f"{path}: finetune.patience: Input should be greater than or equal to 1" in message


def test_override_syntax_is_checked():
    with pytest.raises(ConfigError, match=r"section\.key=value"):
        parse_overrides(["head_epochs=3"])
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_overrides(["finetune.head_epochs=[1"])


def test_cli_names_a_missing_data_folder_and_exits_2(tmp_path, capsys):
    assert main(["--root", str(tmp_path), "train", "--data", "nowhere"]) == 2
    assert f"{tmp_path / 'nowhere'}: data folder not found" in capsys.readouterr().err


def test_cli_names_a_bad_params_file(tmp_path, capsys):
    (tmp_path / "params.yaml").write_text("finetune:\n  head_epochs: lots\n")
    assert main(["--root", str(tmp_path), "status"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "params.yaml") in err and "head_epochs" in err


def test_params_written_before_the_modality_sections_still_load(tmp_path):
    """Image fields once spread over data, validate, select and augment land in `images:`."""
    path = tmp_path / "params.yaml"
    path.write_text(
        "data:\n  raw: photos\n  image_size: 48\n  resize: pad\n"
        "validate:\n  min_images_per_class: 7\n  max_pixels: 1000\n  formats: [PNG]\n"
        "select:\n  top_k: 1\n"
        "  candidates: [{uri: 'keras:MobileNetV3Small', weights: none, image_size: 64}]\n"
        "search:\n  strategies: [head, pixels]\n"
        "augment:\n  flip: true\n"
    )
    params = load_params(path, parse_overrides(["data.image_size=40"]))
    images = params.images
    assert (images.size, images.resize, images.max_pixels, images.formats, images.flip) == (
        40,
        "pad",
        1000,
        ("PNG",),
        True,
    )
    assert images.candidates == (Candidate(uri="keras:MobileNetV3Small", weights="none", size=64),)
    assert (params.data.raw, params.validate.min_per_class, params.select.top_k) == ("photos", 7, 1)
    assert params.texts == Params().texts and params.search.strategies == ("head", "raw")


def test_the_modality_is_found_from_the_data_or_set(tmp_path):
    from tasks import modality

    texts, photos = tmp_path / "texts", tmp_path / "photos"
    for name in ("a", "b"):
        (texts / name).mkdir(parents=True)
        (texts / name / "1.txt").write_text("words")
        (photos / name).mkdir(parents=True)
        (photos / name / "1.png").write_bytes(b"\x89PNG")
    (texts / "a" / "notes.md").write_text("one stray file among texts")
    (texts / "a" / "2.txt").write_text("more words")
    assert modality.from_params(Params(), texts).name == "texts"
    assert modality.from_params(Params(), photos).name == "images"
    forced = Params.model_validate({"data": {"modality": "images"}, "texts": {"window": 64}})
    assert modality.from_params(forced, texts).name == "images"
    assert modality.from_params(Params.model_validate({"texts": {"window": 64}}), texts).window == 64
