"""The strategy search (on by default): how to fine-tune, chosen on the validation split.
`strategy` runs it; `records` is what a trial leaves and how the kept one is chosen; `heads`
trains heads on cached frozen features; `rungs` fine-tunes as one bracket of successive
halving; `ensemble` averages the best trials (模型融合). Imports `core`, `data`, `models`."""
