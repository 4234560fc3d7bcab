"""Training: the paper's losses (:mod:`bgmatting.train.losses`) and, later, the trainer (base and refine stages)."""
