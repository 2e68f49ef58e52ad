from pathlib import Path

import pytest

from flows.cli import parse_overrides
from tasks.config import Candidate, ConfigError, Params, load_params

ROOT = Path(__file__).resolve().parents[1]


def test_params_yaml_matches_embedded_defaults():
    assert load_params(ROOT / "params.yaml") == Params()


def test_missing_params_file_uses_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_params() == Params()


def test_overrides_apply_on_top_of_the_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("finetune:\n  head_epochs: 3\n")
    params = load_params(path, parse_overrides(["finetune.patience=1", "register.min_delta=0.05"]))
    assert params.finetune.head_epochs == 3
    assert params.finetune.patience == 1
    assert params.register.min_delta == 0.05


def test_candidates_accept_strings_and_mappings(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(
        "select:\n  candidates:\n    - file:/m.keras\n    - {uri: keras:MobileNetV3Small, weights: none}\n"
    )
    assert load_params(path).select.candidates == (
        Candidate("file:/m.keras"),
        Candidate("keras:MobileNetV3Small", "none"),
    )


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("finetune:\n  head_epoch: 3\n", "unknown key(s) ['head_epoch'] in 'params.finetune'"),
        ("finetune:\n  head_epochs: many\n", "'params.finetune.head_epochs' must be int"),
        ("nonsense: {}\n", "unknown key(s) ['nonsense']"),
        ("finetune: [1, 2]\n", "'params.finetune' must be a mapping"),
        ("a: [\n", "not valid YAML"),
    ],
)
def test_bad_params_name_the_file_and_the_key(tmp_path, text, fragment):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert str(path) in str(err.value)
    assert fragment in str(err.value)


def test_override_syntax_is_checked():
    with pytest.raises(ConfigError, match=r"section\.key=value"):
        parse_overrides(["head_epochs=3"])


def test_cli_names_a_missing_data_folder_and_exits_2(tmp_path, capsys):
    from flows.cli import main

    assert main(["--root", str(tmp_path), "train", "--data", "nowhere"]) == 2
    assert f"{tmp_path / 'nowhere'}: data folder not found" in capsys.readouterr().err


def test_cli_names_a_bad_params_file(tmp_path, capsys):
    from flows.cli import main

    (tmp_path / "params.yaml").write_text("finetune:\n  head_epochs: lots\n")
    assert main(["--root", str(tmp_path), "status"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "params.yaml") in err and "head_epochs" in err
