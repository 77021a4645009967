"""Readers shared by training and evaluation: the feature store and the split's tables."""
