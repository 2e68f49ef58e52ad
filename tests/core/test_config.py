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
    assert load_params(path).select.candidates == (
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
        ("select:\n  candidates: []\n", "select.candidates: "),
        ("select:\n  candidates: [hub:x]\n", "select.candidates.0.uri: a candidate is registry:"),
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
