"""Evaluation: numbers about predictions. Test metrics, calibration, plots (`evaluate`), the
paired statistical gate that compares two models on the same images (`gate`), the model card.
Knows nothing of Keras models or the registry; imports only `core`."""
