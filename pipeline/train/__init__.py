"""Training: the producer–consumer minibatch loader, the trainer, checkpoints and validation."""
