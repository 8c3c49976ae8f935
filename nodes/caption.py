"""LlavaRSCaption: one caption per image of the batch, as a STRING list, through the engine's caption run."""

from __future__ import annotations

from comfy_api.latest import io, ui

from ..rsvl_core.hosted.settings import caption_options, captions_text
from ..rsvl_core.pipeline.stage_runs import run_caption
from .host import HOST, ProgressReporter, to_bchw, user_errors
from .schema import CaptionerHandle, RSVLNode, node_schema, seed_input, setting_input


class LlavaRSCaption(RSVLNode):
    NODE_ID = "LlavaRSCaption"

    @classmethod
    def define_schema(cls) -> io.Schema:
        node = cls.NODE_ID
        return node_schema(
            node,
            description="Describes the image with the remote-sensing captioner. The caption is a STRING: edit it, "
                        "or feed ControlNetRefine any text node instead.",
            is_output_node=True,
            inputs=[
                io.Image.Input("image", tooltip="Image to describe (usually the stage-1 output)."),
                CaptionerHandle.Input("captioner", tooltip="captioner output of LoadRSVLModels."),
                setting_input("prompt", node, "The instruction; <image> marks where the image goes (the start if "
                                              "absent). Default: the seed's analyst prompt."),
                setting_input("max_new_tokens", node),
                setting_input("temperature", node),
                seed_input(node, "Makes the sampled caption reproducible."),
            ],
            outputs=[io.String.Output(display_name="caption", is_output_list=True,
                                      tooltip="One caption per image of the batch, as a list: ControlNetRefine pairs "
                                              "them with its images; a text node after it runs once per caption.")],
        )

    @classmethod

    @classmethod
    def execute(cls, image, captioner, prompt, max_new_tokens, temperature, seed) -> io.NodeOutput:
        with user_errors(cls.label()):
            options = caption_options(prompt=prompt, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
            captions = run_caption(captioner.source(HOST), to_bchw(image), options, ProgressReporter(HOST)).captions
            return io.NodeOutput(captions, ui=ui.PreviewText(captions_text(captions)))
