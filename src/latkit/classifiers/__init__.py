"""Classifiers (image and text): the latent adversary, training and evaluation beyond chat models (#19)."""
