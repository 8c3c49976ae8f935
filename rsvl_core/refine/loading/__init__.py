"""Loading the refiner from the files users own (an SDXL single file + a SUPIR checkpoint), the LDM key
names, and the refiner over an SDXL somebody else holds."""
