"""Stage 2: the SUPIR-style refiner on SDXL (control network, ZeroSFT connectors, restore EDM sampler)."""
