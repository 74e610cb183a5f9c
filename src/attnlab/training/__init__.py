"""Training, checkpoints, decoding (greedy / beam), evaluation and the bottleneck experiment."""
