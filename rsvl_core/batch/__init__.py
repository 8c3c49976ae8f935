"""`rsvl batch`: the job API spread over a Ray cluster (one actor per GPU, models loaded once per actor).

Work items are whole images and, for scenes larger than `--window-size`, the windows of one scene, so one
huge GeoTIFF is spread across every GPU; the driver blends each scene's windows in order into the same strip
buffer `rsvl upscale` uses and writes the result atomically. Ray does the scheduling, transport and actor
restarts; this package only says what the work items are and what to do with their results.

- `cluster.py`: join or start Ray, and decide how many actors with which resources.
- `worker.py`: the actor (`SceneWorker`): executes the job API's work items (whole images, scene captions, windows).
- `driver.py`: `run_batch`: plan items, dispatch them to actors, retry on actor death, assemble, record.
"""

from .cluster import ClusterOptions
from .driver import BatchSummary, run_batch

__all__ = ["BatchSummary", "ClusterOptions", "run_batch"]
