"""RSVLLoadScene and RSVLSaveGeoTIFF: a raster from input/ read as `rsvl upscale` reads it (IMAGE + RSVL_GEO +
nodata MASK), and IMAGE + RSVL_GEO written as `rsvl upscale` writes it (GeoTIFF/COG in output/), through the
engine's scene files (rsvl_core/hosted/scene_files.py). Names stay inside input/ and output/ (hosted/paths.py)."""

from __future__ import annotations

from comfy_api.latest import io, ui

from ..rsvl_core.hosted.scene_files import (
    BIT_DEPTHS,
    FORMATS,
    input_choices,
    input_fingerprint,
    input_problem,
    load_scene,
    output_problem,
    prompt_tags,
    save_scene,
)
from .host import HOST, folder_paths, to_bchw, to_bhwc, user_errors
from .schema import RSVLNode, SceneGeoHandle, node_schema, setting_input


class RSVLLoadScene(RSVLNode):
    NODE_ID = "RSVLLoadScene"

    @classmethod
    def define_schema(cls) -> io.Schema:
        node = cls.NODE_ID
        return node_schema(
            node,
            description="Reads a GeoTIFF (or JPEG 2000, VRT, any image) from ComfyUI's input folder as `rsvl "
                        "upscale` reads it: bands, stretch and nodata as its --bands/--stretch/--percentiles. "
                        "Connect geo to RSVL Save GeoTIFF to write the result back in the same place.",
            inputs=[
                io.Combo.Input("scene", options=input_choices(folder_paths()),
                               tooltip="A raster in ComfyUI's input folder (.tif/.tiff/.jp2/.vrt, or an image; put "
                                       "it there or upload it through /upload/image); names outside it are "
                                       "refused."),
                setting_input("bands", node, multiline=False),  # rsvl upscale's --bands, --stretch, --percentiles
                setting_input("stretch", node),
                setting_input("percentiles", node, multiline=False),
            ],
            outputs=[io.Image.Output(display_name="image", tooltip="The scene in [0, 1]; nodata pixels filled from "
                                                                   "their valid neighbours, as the CLI feeds them."),
                     SceneGeoHandle.Output(display_name="geo", tooltip="CRS, transform, validity mask, source type "
                                                                       "and stretch, band names: for Save GeoTIFF."),
                     io.Mask.Output(display_name="nodata_mask", tooltip="1 at nodata / NaN / masked pixels.")],
        )

    @classmethod
    def validate_inputs(cls, scene=None) -> bool | str:
        """A name outside input/ (../, absolute, an escaping symlink) or no such file: refused in one line when
        the prompt is queued (replaces ComfyUI's list check, so a file uploaded into a sub-folder is accepted)."""
        if scene is None:
            return True
        problem = input_problem(folder_paths(), scene)
        return True if problem is None else f"{cls.label()}: {problem}"

    @classmethod
    def fingerprint_inputs(cls, scene=None, **_) -> str:
        """A file replaced under the same name (an upload with overwrite) is read again."""
        return input_fingerprint(folder_paths(), scene)

    @classmethod
    def execute(cls, scene, bands, stretch, percentiles) -> io.NodeOutput:
        with user_errors(cls.label()):
            loaded = load_scene(folder_paths(), scene, bands, stretch, percentiles)
            device = HOST.intermediate_device()
            text = "\n".join([loaded.geo.describe(), *loaded.geo.notes])
            return io.NodeOutput(to_bhwc(loaded.image, device), loaded.geo, loaded.invalid.to(device),
                                 ui=ui.PreviewText(text))


class RSVLSaveGeoTIFF(RSVLNode):
    NODE_ID = "RSVLSaveGeoTIFF"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return node_schema(
            cls.NODE_ID, hidden=(io.Hidden.prompt,),
            description="Writes the IMAGE back where its scene lies: a GeoTIFF (or COG) in ComfyUI's output folder "
                        "with the grid scaled by the image size, nodata and mask kept and the RSVL_* tags, exactly "
                        "as `rsvl upscale` writes it. Without a georeferenced geo: a plain 8- or 16-bit PNG/TIFF.",
            is_output_node=True,
            inputs=[
                io.Image.Input("image", tooltip="The result: the scene's size times a whole factor."),
                SceneGeoHandle.Input("geo", optional=True, tooltip="geo output of RSVL Load Scene."),
                io.String.Input("filename_prefix", default="rsvl/scene",
                                tooltip="File name in the output folder (sub-folders allowed, nothing outside it); "
                                        "_00001_ and the extension are added."),
                io.Combo.Input("format", options=list(FORMATS), default="GeoTIFF",
                               tooltip="GeoTIFF, COG (Cloud-Optimised GeoTIFF: internal tiles, overviews), or a "
                                       "plain PNG/TIFF. Without georeferencing, GeoTIFF/COG write a plain TIFF."),
                io.Combo.Input("bit_depth", options=list(BIT_DEPTHS), default="8",
                               tooltip="8: as rsvl upscale writes (uint8). 16: a GeoTIFF in the source's own type "
                                       "through the recorded stretch (uint16 for a 16-bit scene, float32 for "
                                       "reflectance); a plain image as 16-bit PNG/TIFF."),
            ],
            outputs=[io.String.Output(display_name="filename", tooltip="The file written, relative to output/.")],
        )

    @classmethod
    def validate_inputs(cls, filename_prefix=None) -> bool | str:
        if filename_prefix is None:
            return True
        problem = output_problem(folder_paths(), filename_prefix)
        return True if problem is None else f"{cls.label()}: {problem}"

    @classmethod
    def execute(cls, image, filename_prefix, format, bit_depth, geo=None) -> io.NodeOutput:
        with user_errors(cls.label()):
            from comfy.cli_args import args

            hidden = getattr(cls, "hidden", None)
            prompt = None if getattr(args, "disable_metadata", False) else getattr(hidden, "prompt", None)
            names = save_scene(folder_paths(), to_bchw(image), geo, filename_prefix, format, bit_depth,
                               prompt_tags(prompt))
            shown = ui.PreviewText("\n".join(f"output/{name}" for name in names)).as_dict()
            # "files": what an API client downloads through /view (filename, subfolder, type), as core's "images"
            files = [{"filename": name.rpartition("/")[2], "subfolder": name.rpartition("/")[0], "type": "output"}
                     for name in names]
            return io.NodeOutput("\n".join(names), ui={**shown, "files": files})
