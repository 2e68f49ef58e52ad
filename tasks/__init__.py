"""What transferops computes, in packages by concern. Flows (`flows/`) wire these together.

The packages, lowest first; a package imports only from itself and the ones above it in this
list (tests/test_layout.py checks it):

- `core`: errors, the typed params, progress lines, Markdown, the run lock, untrusted files;
- `modality`: what differs between kinds of examples (images: decoding, `Pixels`, the image
  checks and the raw-pixel baseline), behind one `Modality` and `Encoding` interface;
- `data`: ingest, validation and Data Docs, splitting, datasets, demo data, DVC (any modality);
- `evaluation`: test metrics and plots, the statistical gate, the model card;
- `models`: backbones, pretraining, the fixed fine-tuning recipe, checkpoints, determinism;
- `search`: the strategy search (head trials, the fine-tune bracket, scratch, ensembles), on by
  default;
- `registry`: the MLflow model registry: versions and aliases, champion history, the served
  model, reproducing a version;
- `selection`: choosing the backbone (LogME on frozen features);
- `promotion`: drift (whether to retrain) and promotion (whether the new model is champion);
- `reporting`: the run summary, DVC metrics files, MLflow tracking set-up;
- `retention`: what a project keeps as it retrains for a year, and what `transferops gc` deletes.
"""
