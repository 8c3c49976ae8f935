"""The pack in the newest ComfyUI frontend on PyPI (1.58.1) served by ComfyUI 0.8 through --front-end-root:
the extension loads (public API only, no page errors) and the node search finds our nodes by the words users
type. The frontend package is downloaded once with pip into the test cache (RSVL_FRONTEND_158 names a folder
holding its `static` files instead); the tests skip when neither is possible.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest
from native_models import CACHE
from test_browser import CAPTION, REFINE, STAGE1, artifacts, browser, open_search_box, page, shot  # noqa: F401
from test_browser import pytestmark as browser_marks
from test_comfy_host import start_server

pytestmark = browser_marks
VERSION = "1.58.1"


@pytest.fixture(scope="module")
def frontend() -> Path:
    """The `static` folder of comfyui-frontend-package 1.58.1 (pip download once, unpacked into the cache)."""
    folder = Path(os.environ.get("RSVL_FRONTEND_158", CACHE / f"comfyui-frontend-{VERSION}"))
    if not (folder / "index.html").is_file():
        with tempfile.TemporaryDirectory() as scratch:
            got = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", scratch,
                                  f"comfyui-frontend-package=={VERSION}"], capture_output=True, text=True,
                                 timeout=600)
            wheels = list(Path(scratch).glob("*.whl"))
            if got.returncode != 0 or not wheels:
                pytest.skip(f"comfyui-frontend-package {VERSION} could not be downloaded: {got.stderr[-300:]}")
            partial = folder.with_name(folder.name + f".{os.getpid()}.partial")
            with zipfile.ZipFile(wheels[0]) as wheel:
                members = [m for m in wheel.namelist() if m.startswith("comfyui_frontend_package/static/")]
                wheel.extractall(partial, members)
            os.replace(partial / "comfyui_frontend_package" / "static", folder)
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory, frontend):
    yield from start_server(tmp_path_factory.mktemp("comfy158"), f"--front-end-root {frontend}")


def test_native_browser_newest_frontend_loads_the_extension(page, server):  # noqa: F811
    version = page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__ ?? null")
    assert version in (None, VERSION), version
    assert page.page_errors == [], page.page_errors


@pytest.mark.parametrize("query, expected", [("upscale", STAGE1), ("super resolution", STAGE1), ("sr3", STAGE1),
                                             ("SUPIR", REFINE), ("caption", CAPTION),
                                             ("remote sensing", CAPTION)])
def test_native_browser_newest_frontend_search_finds_the_nodes(page, artifacts, query, expected):  # noqa: F811
    page.evaluate("() => { app.graph.clear(); app.graph.setDirtyCanvas(true, true); }")
    search = open_search_box(page)
    search.fill(query)
    option = page.get_by_role("option").filter(has_text=expected).first
    option.wait_for(state="visible", timeout=15_000)
    shot(page, artifacts, f"search158_{query.replace(' ', '_')}")
    found = [o.split("\n")[0].strip() for o in page.get_by_role("option").all_inner_texts()]
    assert any(expected in f for f in found[:12]), " | ".join(found)
    page.keyboard.press("Escape")


def test_native_browser_nodes_2_text_box_has_its_label_and_nothing_overlaps(page, server, artifacts):  # noqa: F811
    """"Modern Node Design (Nodes 2.0)" on 1.58.1: the stage-1-only template runs; the node's text box is labelled
    "ran" (not "rsvl_text"), and no node overlaps another after the run. (The Vue renderer shows the box and its
    label; the text set after the run reaches the widget, see `value`, but is not drawn there: a known gap.)"""
    from nodes_testing import WORKFLOWS
    from test_browser import TINY, drop_workflow, node_boxes, overlaps, run, set_widgets, use_demo_models

    page.evaluate("() => app.extensionManager.setting.set('Comfy.VueNodes.Enabled', true)")
    page.wait_for_timeout(1000)
    drop_workflow(page, WORKFLOWS / "rsvl_stage1_only.json")
    set_widgets(page, {**TINY, "LoadRSVLModels": use_demo_models(server, "rsvl_stage1_only")})
    entry = run(page, server)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[-2000:]
    found = page.wait_for_function("""() => {
        const n = app.graph.nodes.find(n => n.type === 'Stage1FidelitySR');
        const w = n?.widgets?.find(w => w.name === 'rsvl_text');
        const el = document.querySelector(`[data-node-id='${n?.id}']`);
        return w && el && String(w.value).startsWith('ran: ')
            ? {label: w.label, value: w.value, text: el.innerText} : null;
    }""", timeout=30_000).json_value()
    shot(page, artifacts, "nodes2_stage1_after_run")
    assert found["label"] == "ran" and found["value"].startswith("ran: ddim, 2 steps"), found
    lines = [line.strip() for line in found["text"].splitlines()]
    assert "ran" in lines and "rsvl_text" not in found["text"], found["text"]
    assert overlaps(node_boxes(page)) == []
    assert page.page_errors == []
