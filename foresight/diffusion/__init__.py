"""EDM preconditioning, the training loss and samplers (Karras et al. 2022, as SVD uses them)."""
