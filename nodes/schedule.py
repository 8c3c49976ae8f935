"""DynamicStepScheduler: steps and step cache for both stages, as one schedule handle."""

from __future__ import annotations

from comfy_api.latest import io

from ..rsvl_core.hosted.settings import scheduler_from_inputs
from .host import user_errors
from .schema import RSVLNode, ScheduleHandle, node_schema, setting_input


class DynamicStepScheduler(RSVLNode):
    NODE_ID = "DynamicStepScheduler"

    @classmethod
    def define_schema(cls) -> io.Schema:
        node = cls.NODE_ID
        return node_schema(
            node,
            description="Steps and step cache for both stages. Connect it to Stage1FidelitySR and/or "
                        "ControlNetRefine; the refine node reports which steps were computed and which reused.",
            inputs=[
                setting_input("cache_preset", node, "Refiner step cache. off: every step computed; seed: the seed's "
                                                  "adaptive cache; fast: ours (first block signal, fixed threshold, "
                                                  "guarded)."),
                setting_input("refine_steps", node, "Refiner sampling steps (replaces ControlNetRefine's steps)."),
                setting_input("cache_threshold", node, "Reuse a step when the relative change is below this. "
                                                     "0 = the preset's own (seed 0.3, fast 0.2)."),
                setting_input("stage1_sampler", node),
                setting_input("stage1_steps", node),
                setting_input("stage1_cache", node),
            ],
            outputs=[ScheduleHandle.Output(display_name="schedule")],
        )

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        with user_errors(cls.label()):
            return io.NodeOutput(scheduler_from_inputs(**inputs))
