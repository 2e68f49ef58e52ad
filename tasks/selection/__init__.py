"""Selection: which pretrained backbone to fine-tune. LogME (`logme`) on frozen features of a
sample, over the candidates of params (`candidates`), or the champion for a warm start.
Imports every package above it: `core`, `data`, `evaluation`, `models`, `registry`."""
