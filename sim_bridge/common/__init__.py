"""What the data, simulator and apps layers (and the model above them) share: frame fitting
and media writing, PSNR/SSIM and video distances, logging set-up, atomic file writes, markdown
tables and Rerun recordings."""
