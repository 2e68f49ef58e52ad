"""Models: everything Keras. Backbones and candidates (`keras:`, `file:`, `registry:` URIs),
pretraining a backbone, the fixed fine-tuning recipe, the trainer the search uses (`search`),
epoch checkpoints, determinism. Imports `core`, `data`, `evaluation`."""
