"""Data for training and evaluation: datasets of the real corpora and the BGMv2 perturbations (:mod:`.perturb`)."""
