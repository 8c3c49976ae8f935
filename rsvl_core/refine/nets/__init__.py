"""The refiner's networks: UNet (where SUPIR injects control), GLVControl, ZeroSFT connectors, the VAE with
its denoise encoder, the text encoders, the CFG call, and their architecture config."""
