import numpy as np
import pytest

from tasks.selection.logme import _evidence, log_evidence, logme


def data(n=300, d=20, informative=True, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    f = rng.normal(size=(n, d))
    if informative:
        f[:, :3] += 3.0 * np.eye(3)[y]
    return f, y


@pytest.mark.parametrize(("n", "d"), [(200, 10), (30, 60)])  # n > d and n < d
def test_eigenbasis_evidence_equals_the_textbook_formula(n, d):
    f, y = data(n, d)
    target = (y == 1).astype(float)
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    value, alpha, beta = _evidence(s**2, u.T @ target, float(target @ target), n, d)
    assert value == pytest.approx(log_evidence(f, target, alpha, beta), rel=1e-8)


def test_fixed_point_finds_the_evidence_maximum():
    f, y = data()
    target = (y == 0).astype(float)
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    best, alpha, beta = _evidence(
        s**2, u.T @ target, float(target @ target), *f.shape, max_iter=100, tol=1e-9
    )
    for a, b in ((alpha * 2, beta), (alpha / 2, beta), (alpha, beta * 1.5), (alpha, beta / 1.5)):
        assert log_evidence(f, target, a, b) < best


def test_informative_features_score_higher_than_noise():
    f_good, y = data(informative=True)
    f_bad, _ = data(informative=False)
    assert logme(f_good, y) > logme(f_bad, y) + 0.05


def test_scores_are_deterministic_and_shape_checked():
    f, y = data()
    assert logme(f, y) == logme(f.copy(), y.copy())
    with pytest.raises(ValueError, match="features must be"):
        logme(f, y[:-1])


def test_candidate_names_are_metric_safe_and_tell_versions_apart():
    from tasks.core.config import Candidate
    from tasks.selection.families import candidate_name

    assert (
        candidate_name(Candidate(uri="registry:transferops-backbone@pretrained"))
        == "transferops-backbone_pretrained"
    )
    assert candidate_name(Candidate(uri="registry:transferops-backbone/3")) == "transferops-backbone_3"
    assert candidate_name(Candidate(uri="file:/models/b.keras")) == "b.keras"
