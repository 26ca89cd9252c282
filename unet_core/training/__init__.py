"""Training pieces that run as plain Python / TensorFlow: slice shards, the distributed step,
the epoch callbacks, checkpoint state. Ray Train only calls these (see jobs/train.py)."""
