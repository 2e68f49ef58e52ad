"""Promotion: the decisions about the champion. Drift between the champion's training images
and new data (`drift`: whether to retrain) and the gate applied to a new model (`promote`:
evaluate it beside the champion on the same test images, register it, move the aliases).
Imports every package but `reporting`."""
