"""Training stage: the network, the Trainer's run_fn, triplet losses and batching."""
