"""AID model parts: adapters, the adapted UNet, DQFormer and the encoders."""
