"""Training: the AID loss with condition dropout, and (in `recipe`) the embedded model's recipe."""
