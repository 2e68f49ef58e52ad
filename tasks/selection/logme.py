"""LogME: the log of the maximum evidence of a linear model on frozen features.

You, Liu, Wang, Long. "LogME: Practical Assessment of Pre-trained Models for Transfer
Learning", ICML 2021. For each class k the one-hot label column y_k is modelled as
y = F w + noise with prior w ~ N(0, 1/alpha I) and noise ~ N(0, 1/beta). alpha and beta are
set by MacKay's fixed-point iteration to maximise the evidence p(y | F, alpha, beta); the
score is the evidence per sample, averaged over classes. Higher means the features make the
labels easier to fit linearly, which predicts fine-tuning accuracy without fine-tuning.

Everything works in the eigenbasis of F^T F (one thin SVD of F), so each iteration costs
O(min(N, D)) per class.
"""

from __future__ import annotations

import numpy as np


def _evidence(
    sigma2: np.ndarray, x: np.ndarray, y_norm2: float, n: int, d: int, max_iter: int = 11, tol: float = 1e-2
) -> tuple[float, float, float]:
    """(log evidence / n, alpha, beta) at the evidence maximum for one target.

    sigma2: eigenvalues of F^T F (length r = rank); x: y projected on the left singular vectors;
    y_norm2: |y|^2, so |y|^2 - |x|^2 is the part of y outside F's column space.
    """
    x2 = x**2
    outside = max(y_norm2 - float(x2.sum()), 0.0)
    alpha, beta = 1.0, 1.0
    for _ in range(max_iter):
        denom = alpha + beta * sigma2
        gamma = float((beta * sigma2 / denom).sum())  # effective number of parameters
        m2 = float((beta**2 * sigma2 * x2 / denom**2).sum())  # |m|^2, m the posterior mean
        res2 = float((x2 * (alpha / denom) ** 2).sum()) + outside  # |y - F m|^2
        new_alpha = gamma / (m2 + 1e-5)
        new_beta = (n - gamma) / (res2 + 1e-5)
        converged = abs(new_alpha / new_beta - alpha / beta) / (alpha / beta) < tol
        alpha, beta = new_alpha, new_beta
        if converged:
            break
    denom = alpha + beta * sigma2
    m2 = float((beta**2 * sigma2 * x2 / denom**2).sum())
    res2 = float((x2 * (alpha / denom) ** 2).sum()) + outside
    r = sigma2.shape[0]
    log_det_a = float(np.log(denom).sum()) + (d - r) * np.log(alpha)
    evidence = (
        d / 2 * np.log(alpha)
        + n / 2 * np.log(beta)
        - 0.5 * log_det_a
        - beta / 2 * res2
        - alpha / 2 * m2
        - n / 2 * np.log(2 * np.pi)
    )
    return float(evidence / n), alpha, beta


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME score of `features` (n, d) for integer class `labels` (n,). Higher is better."""
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    if f.ndim != 2 or y.shape != (f.shape[0],):
        raise ValueError(f"features must be (n, d) and labels (n,), got {f.shape} and {y.shape}")
    n, d = f.shape
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    keep = s > s.max(initial=0.0) * 1e-10
    u, sigma2 = u[:, keep], s[keep] ** 2
    scores = []
    for k in np.unique(y):
        target = (y == k).astype(np.float64)
        scores.append(_evidence(sigma2, u.T @ target, float(target @ target), n, d)[0])
    return float(np.mean(scores))


def log_evidence(features: np.ndarray, target: np.ndarray, alpha: float, beta: float) -> float:
    """Direct O(d^3) log evidence / n at given alpha, beta (the textbook formula, for checking)."""
    f = np.asarray(features, dtype=np.float64)
    n, d = f.shape
    a = alpha * np.eye(d) + beta * f.T @ f
    m = beta * np.linalg.solve(a, f.T @ target)
    _, log_det = np.linalg.slogdet(a)
    value = (
        d / 2 * np.log(alpha)
        + n / 2 * np.log(beta)
        - 0.5 * log_det
        - beta / 2 * float(((target - f @ m) ** 2).sum())
        - alpha / 2 * float(m @ m)
        - n / 2 * np.log(2 * np.pi)
    )
    return float(value / n)
