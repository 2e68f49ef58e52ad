"""Determinism: the same inputs give the same model.

Every source of randomness is seeded from params where it is used: each initializer and
dropout layer gets an explicit seed (`tasks.models.backbones`; Keras' seed=None default draws from
Python's global `random`, which Prefect's and MLflow's threads draw from too, so two runs
differed by thread timing), shuffling through `keras.utils.set_random_seed`, LogME's sample
through a numpy Generator. TensorFlow's op determinism makes the kernels themselves repeatable
(no nondeterministic reductions or atomics). The result repeats bit for bit on the same machine
type with the same library versions; `reproducibility.deterministic: false` trades that for
speed.
"""

from __future__ import annotations


def configure(deterministic: bool) -> None:
    """Turn TensorFlow's op determinism on for this process (it cannot be turned off again:
    a process that ran deterministic stays so)."""
    if deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
