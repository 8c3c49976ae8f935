"""The commands and their one-line help: what `rsvl --help` shows without importing the engine (or torch)."""

COMMANDS = {
    "upscale": "super-resolve image files or folders",
    "batch": "super-resolve many images and large scenes on a Ray cluster (one actor per GPU)",
    "caption": "describe images with the vision-language captioner (LLaVA-NeXT)",
    "weights": "list, check and download the weights each stage needs",
    "eval": "evaluate methods on HR images: the paper's protocol, fidelity and hallucination metrics, maps",
    "demo": "prove the install: tiny random models, real file formats, real pipeline",
}
DESCRIPTION = ("Remote-sensing super-resolution: a fidelity stage (SR3 or any SR model), caption, "
               "SUPIR/SDXL refinement.")
