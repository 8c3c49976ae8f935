"""RSVLUncertainty: where N samples of one scene disagree (combined image, heat map, summary; optional guard)."""

from __future__ import annotations

from comfy_api.latest import io, ui

from ..rsvl_core.hosted.samples import uncertainty_outputs
from .host import HOST, to_bchw, to_bhwc, user_errors
from .schema import RSVLNode, node_schema, setting_input


class RSVLUncertainty(RSVLNode):
    NODE_ID = "RSVLUncertainty"

    @classmethod
    def define_schema(cls) -> io.Schema:
        node = cls.NODE_ID
        return node_schema(
            node,
            description="Takes N samples of the same scene (an IMAGE batch: e.g. RepeatImageBatch before the stage "
                        "nodes, each element gets its own noise) and shows where they disagree: the combined image, "
                        "a heat map of the per-pixel std (8-bit levels) and a summary. With guard > 0, pixels whose "
                        "std exceeds it fall back to the stage-1 image (feathered).",
            is_output_node=True,
            inputs=[
                io.Image.Input("samples", tooltip="N >= 2 samples of one scene, as one IMAGE batch."),
                setting_input("combine", node),
                setting_input("guard", node),
                setting_input("feather", node),
                io.Image.Input("stage_1", optional=True,
                               tooltip="The stage-1 image of the scene: the guard's fallback (first of a batch)."),
            ],
            outputs=[io.Image.Output(display_name="image"), io.Image.Output(display_name="uncertainty"),
                     io.String.Output(display_name="summary")],
        )


    @classmethod
    def execute(cls, samples, combine, guard, feather, stage_1=None) -> io.NodeOutput:
        with user_errors(cls.label()):
            out = uncertainty_outputs(to_bchw(samples), None if stage_1 is None else to_bchw(stage_1),
                                      combine=combine, guard=guard, feather=feather)
            device = HOST.intermediate_device()
            return io.NodeOutput(to_bhwc(out.image, device), to_bhwc(out.heat_map, device), out.summary,
                                 ui=ui.PreviewText(out.summary))
