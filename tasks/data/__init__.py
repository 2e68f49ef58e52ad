"""Data: from a folder of images to validated, split datasets. Ingest (the manifest: one row per
file, read inside the data root only), decoding (`images`: the one decoding function, shared
with the served model), Great Expectations validation and its offline Data Docs, the stable
content-hash split, datasets for training, the Fashion-MNIST demo data, DVC versioning and data
lineage. Imports only `core`."""
