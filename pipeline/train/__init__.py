"""Training: the minibatch loader, the feature store and (later) the training loop."""
