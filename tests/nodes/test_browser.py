"""The pack in the real ComfyUI frontend, driven in headless Chromium (Playwright, Debian's chromium).

Each shipped workflow file is dropped onto the canvas, set to the tiny demo models and tiny settings the way a
user would change widgets, and run with the Run button; the tests assert the final image appears, the caption
(and the refine report) is shown on its node, nothing overlaps or hides under the toolbar after the run, an
invalid tile setting is answered with a message naming the node and the typed value, and the node search finds
the nodes by "upscale" / "super resolution". Screenshots of each go to --browser-artifacts (default: pytest's
tmp dir); their paths are printed.

Runs on both hosts, each with the frontend it ships (0.8.0: 1.35.9; 0.20.1: its own). A missing host, Chromium or
Playwright fails under CI and skips elsewhere, with a one-line reason (hosts.py).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from hosts import CHROMIUM, browser_missing, require
from nodes_testing import OUR_NODES, WORKFLOWS
from test_comfy_host import get
from test_comfy_host import server as server  # noqa: F401  (the module's ComfyUI server fixture: each host)

try:
    import playwright.sync_api as playwright_api
except ImportError:  # pragma: no cover - depends on the machine; browser_missing() says so
    playwright_api = None

pytestmark = [pytest.mark.slow]

STAGE1 = "Upscale Aerial/Satellite: SR3 (RSVL stage 1)"
# widget values a user would set to try a template on the tiny demo models on a CPU
TINY = {
    "DynamicStepScheduler": {"stage1_sampler": "ddim", "stage1_steps": 2, "refine_steps": 3, "cache_preset": "fast"},
    "Stage1FidelitySR": {"scale": "2", "sampler": "ddim", "steps": 2},
    "LlavaRSCaption": {"max_new_tokens": 6},
    "ControlNetRefine": {"steps": 3, "min_size": 64},
}


@pytest.fixture(scope="module")
def artifacts(request, tmp_path_factory) -> Path:
    folder = request.config.getoption("--browser-artifacts", default=None)
    path = Path(folder) if folder else tmp_path_factory.mktemp("browser_artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def browser():
    require(browser_missing())
    with playwright_api.sync_playwright() as driver:
        chromium = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture()
def page(browser, server):  # noqa: F811
    settings = {"Comfy.TutorialCompleted": True, "Comfy.Validation.Workflows": True,
                "Comfy.VueNodes.Enabled": False,  # each test starts in the classic canvas (a test may switch)
                "Comfy.RightSidePanel.IsOpen": False}  # newer frontends keep their side panel open between pages
    post(server, "/settings", settings)
    context = browser.new_context(viewport={"width": 1600, "height": 1000}, reduced_motion="reduce")
    # No animations: a busy machine can stall a CSS leave transition, leaving PrimeVue's block mask over the page
    # (its element waits for an animationend that never comes). With zero durations Vue ends them at once.
    context.add_init_script("""document.addEventListener("DOMContentLoaded", () => {
        const style = document.createElement("style");
        style.textContent = "*, *::before, *::after { animation-duration: 0s !important; "
            + "animation-delay: 0s !important; transition-duration: 0s !important; transition-delay: 0s !important; }";
        document.head.appendChild(style);
    });""")
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.goto(f"http://127.0.0.1:{server['port']}/", wait_until="load")
    tab.wait_for_function("() => window.app && window.app.graph && window.app.canvas", timeout=60_000)
    tab.wait_for_function("() => (window.app.extensionManager?.extensions ?? window.app.extensions ?? [])"
                          ".some(e => e.name === 'rsvl.NodeText')", timeout=30_000)
    tab.wait_for_function("() => !document.querySelector('.p-blockui-mask')", timeout=60_000)
    tab.page_errors = errors
    yield tab
    context.close()


def post(host: dict, path: str, body: dict) -> None:
    import urllib.request

    request = urllib.request.Request(f"http://127.0.0.1:{host['port']}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    urllib.request.urlopen(request, timeout=30).read()


def shot(page, artifacts: Path, name: str) -> Path:
    path = artifacts / f"{name}.png"
    page.screenshot(path=str(path))
    print(f"screenshot: {path}")
    return path


def drop_workflow(page, path: Path) -> None:
    """Drop the workflow file onto the canvas, as a drag from the file manager does."""
    page.evaluate(
        """([name, text]) => {
            const data = new DataTransfer();
            data.items.add(new File([text], name, {type: "application/json"}));
            const canvas = document.querySelector("#graph-canvas") ?? app.canvas.canvas;
            const box = canvas.getBoundingClientRect();
            for (const type of ["dragenter", "dragover", "drop"]) {
                canvas.dispatchEvent(new DragEvent(type, {dataTransfer: data, bubbles: true, cancelable: true,
                                                          clientX: box.x + box.width / 2,
                                                          clientY: box.y + box.height / 2}));
            }
        }""", [path.name, path.read_text(encoding="utf-8")])
    expected = len(json.loads(path.read_text(encoding="utf-8"))["nodes"])
    page.wait_for_function("n => app.graph.nodes.length === n", arg=expected, timeout=30_000)


def set_widgets(page, values: dict[str, dict]) -> None:
    """Set widget values by node type (what a user does by clicking on the widgets)."""
    missing = page.evaluate(
        """values => {
            const missing = [];
            for (const node of app.graph.nodes) {
                for (const [name, value] of Object.entries(values[node.type] ?? {})) {
                    const widget = node.widgets?.find(w => w.name === name);
                    if (!widget) { missing.push(node.type + "." + name); continue; }
                    widget.value = value;
                    widget.callback?.(value);
                }
            }
            app.graph.setDirtyCanvas(true, true);
            return missing;
        }""", values)
    assert missing == []


def press_run(page) -> None:
    """Press the Run button. A PrimeVue block mask left over from loading (its leave animation can stall under
    load in headless Chromium) may cover the page: wait for it to go, then click; if it stays, send the click to
    the button itself, as the mask has no handler of its own."""
    button = page.get_by_role("button", name="Run", exact=True).first
    try:
        page.wait_for_function("() => !document.querySelector('.p-blockui-mask')", timeout=30_000)
        button.click(timeout=30_000)
    except playwright_api.TimeoutError:
        button.dispatch_event("click")


def run(page, server: dict, timeout: float = 300) -> dict:  # noqa: F811
    """Press Run; wait until the queue is empty; the newest history entry."""
    before = set(get(server, "/history"))
    press_run(page)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        history = get(server, "/history")
        new = [k for k in history if k not in before]
        if new and history[new[-1]].get("status", {}).get("completed") is not None:
            entry = history[new[-1]]
            if entry["status"].get("status_str") in ("success", "error"):
                return entry
        time.sleep(1)
    raise AssertionError("the run did not finish in time")


def node_boxes(page) -> list[dict]:
    """Each node's box as drawn now (after previews grew it), title bar included: from the graph in the classic
    canvas, from the node elements in "Nodes 2.0" (screen pixels: the same scale for every node)."""
    return page.evaluate(
        """() => app.graph.nodes.map(n => {
            const element = document.querySelector(`[data-node-id='${n.id}']`);
            if (element) {
                const r = element.getBoundingClientRect();
                return {id: n.id, type: n.type, x: r.x, y: r.y, w: r.width, h: r.height};
            }
            const title = LiteGraph.NODE_TITLE_HEIGHT;
            return {id: n.id, type: n.type, x: n.pos[0], y: n.pos[1] - title, w: n.size[0], h: n.size[1] + title};
        })""")


def overlaps(boxes: list[dict]) -> list[tuple[str, str]]:
    found = []
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            if a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"] and a["y"] < b["y"] + b["h"] and \
                    b["y"] < a["y"] + a["h"]:
                found.append((f"{a['type']}#{a['id']}", f"{b['type']}#{b['id']}"))
    return found


def titles_under_toolbar(page) -> list[str]:
    """Nodes whose title bar is covered by something other than the canvas (the toolbar) at the saved view."""
    return page.evaluate(
        """() => {
            const canvas = app.canvas.canvas, box = canvas.getBoundingClientRect(), covered = [];
            for (const n of app.graph.nodes) {
                const [x, y] = app.canvas.ds.convertOffsetToCanvas([n.pos[0] + 10,
                                                                   n.pos[1] - LiteGraph.NODE_TITLE_HEIGHT / 2]);
                const dpr = canvas.width / box.width;
                const cx = box.x + x / dpr, cy = box.y + y / dpr;
                if (cx > window.innerWidth || cy > window.innerHeight) continue;  // off screen: panned to, not hidden
                const hit = document.elementFromPoint(cx, cy);
                if (hit !== canvas) covered.push(n.type + "#" + n.id + " under " + (hit?.className || hit?.tagName));
            }
            return covered;
        }""")


def use_demo_models(server: dict, name: str) -> dict:  # noqa: F811
    """The loader's choices for the tiny models, keeping 'none' where the workflow has none."""
    workflow = json.loads((WORKFLOWS / "api" / f"{name}.json").read_text(encoding="utf-8"))
    loader = next(n for n in workflow.values() if n["class_type"] == "LoadRSVLModels")["inputs"]
    return {k: (server["choices"][k] if loader[k] != "none" else "none") for k in server["choices"]}


def text_on_node(page, node_type: str) -> str | None:
    """The text of the pack's read-only text box on the node of this type, if it is visible."""
    box = shown_texts(page).get(node_type)
    return box["text"] if box and box["visible"] else None


TEXT_LABELS = {"Stage1FidelitySR": "ran", "LlavaRSCaption": "caption", "ControlNetRefine": "report"}


def use_nodes_2(page, on: bool) -> None:
    """Switch "Modern Node Design (Nodes 2.0)" on or off, as the setting does; with nodes on the canvas, wait
    until they are drawn by the chosen renderer."""
    page.evaluate("on => app.extensionManager.setting.set('Comfy.VueNodes.Enabled', on)", on)
    page.wait_for_function("on => app.graph.nodes.length === 0 || !!document.querySelector('[data-node-id]') === on",
                           arg=on, timeout=30_000)
    settle(page)


def settle(page) -> None:
    """Wait (polling, not a fixed delay) until node sizes and the drawn node elements stay the same for three
    frames in a row: the layout after a run or a renderer switch is final."""
    page.evaluate("""() => new Promise(done => {
        const look = () => JSON.stringify([app.graph.nodes.map(n => [n.id, ...n.size]),
            [...document.querySelectorAll('[data-node-id]')].map(e => { const r = e.getBoundingClientRect();
                                                                        return [r.x, r.y, r.width, r.height]; })]);
        let last = look(), same = 0;
        const tick = () => { const now = look(); same = now === last ? same + 1 : 0; last = now;
                             if (same >= 3) done(); else requestAnimationFrame(tick); };
        requestAnimationFrame(tick);
    })""")


def shown_texts(page) -> dict[str, dict]:
    """Each of our text boxes, by node type: its label and text, whether it is visible, how many lines fit."""
    return page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('[data-rsvl-text]')].map(box => {
            const area = box.querySelector('textarea'), label = box.querySelector('.rsvl-text-label');
            const r = area.getBoundingClientRect(), style = getComputedStyle(area);
            const visible = r.width > 20 && r.height > 10 && box.checkVisibility();
            return [box.dataset.rsvlText, {label: label?.innerText?.trim(), text: area.value, visible,
                                           lines: Math.floor(area.clientHeight / parseFloat(style.lineHeight))}];
        }))""")


def node_sizes(page, types) -> dict[int, list[float]]:
    return page.evaluate("ts => Object.fromEntries(app.graph.nodes.filter(n => ts.includes(n.type))"
                         ".map(n => [n.id, [Math.round(n.size[0]), Math.round(n.size[1])]]))", list(types))


def check_native_workflow(page, server, artifacts, run_in_nodes_2: bool, tag: str) -> None:
    """The shipped ComfyUI-native workflow dropped and run in one renderer, then looked at in the other: each
    text box shows the node's text under its label (the refine report has room for 3 lines), our nodes have
    the size they had before the run, and no node overlaps another."""
    from native_models import native_workflow_values

    page.evaluate("() => { app.graph.clear(); }")
    use_nodes_2(page, run_in_nodes_2)
    drop_workflow(page, WORKFLOWS / "rsvl_native_comfy_models.json")
    use_nodes_2(page, run_in_nodes_2)
    values = native_workflow_values(server)
    # a seed of its own per renderer (unused by the upscale model, but part of the prompt): ComfyUI runs the graph
    # again instead of answering from its cache, which would leave the texts out of this prompt's outputs
    values["Stage1FidelitySR"]["seed"] = int(run_in_nodes_2)
    set_widgets(page, values)
    # core's upscale model is connected to stage 1: its SR3 sampler settings are marked unused, the seed fixed
    stage1 = page.evaluate("""() => {
        const n = app.graph.nodes.find(n => n.type === 'Stage1FidelitySR');
        const seed = n.widgets.find(w => w.name === 'seed');
        return {labels: n.widgets.filter(w => ['sampler', 'steps', 'seed'].includes(w.name)).map(w => w.label),
                control: (seed.linkedWidgets ?? []).map(w => w.value)};
    }""")
    assert stage1["labels"] == [f"{w} (unused by an upscale model)" for w in ("sampler", "steps", "seed")], stage1
    assert stage1["control"] == ["fixed"], stage1
    before = node_sizes(page, TEXT_LABELS)
    entry = run(page, server)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[-2000:]
    ids = page.evaluate("() => Object.fromEntries(app.graph.nodes.map(n => [n.type, String(n.id)]))")
    expected = {kind: "\n".join(entry["outputs"][ids[kind]]["text"]) for kind in TEXT_LABELS}
    assert expected["Stage1FidelitySR"].startswith("ran: ") and "UNet calls" in expected["ControlNetRefine"]
    for nodes_2 in (run_in_nodes_2, not run_in_nodes_2):
        use_nodes_2(page, nodes_2)
        page.wait_for_function("want => Object.entries(want).every(([kind, text]) => [...document.querySelectorAll("
                               "`[data-rsvl-text='${kind}'] textarea`)].some(a => a.value === text))",
                               arg=expected, timeout=30_000)
        renderer = "nodes2" if nodes_2 else "classic"
        shot(page, artifacts, f"{tag}_native_{renderer}")
        shown = shown_texts(page)
        for kind, label in TEXT_LABELS.items():
            assert shown[kind]["label"] == label and shown[kind]["text"] == expected[kind], (renderer, shown)
            assert shown[kind]["visible"], (renderer, kind, shown[kind])
        assert shown["ControlNetRefine"]["lines"] >= 3, (renderer, shown)
        if nodes_2 == run_in_nodes_2:
            assert node_sizes(page, TEXT_LABELS) == before  # the run did not grow our nodes
        boxes = node_boxes(page)
        assert overlaps(boxes) == [], (renderer, boxes)
    assert page.page_errors == []


@pytest.mark.parametrize("run_in", ["classic", "nodes_2"])
def test_native_browser_workflow_runs_and_shows_its_texts(page, server, artifacts, run_in):  # noqa: F811
    """Frontend 1.35.9 (ComfyUI 0.8's own): run in one renderer, then looked at in the other."""
    check_native_workflow(page, server, artifacts, run_in_nodes_2=run_in == "nodes_2", tag=f"fe135_{run_in}")


SHIPPED = sorted(p.stem for p in WORKFLOWS.glob("*.json"))


def widgets_on_canvas(page) -> dict[str, list]:
    """Each node's saved widget values as the canvas holds them now: {node id: [value of each widget the
    workflow file saves, in order]} (widgets with serialize = false, such as our text boxes, are not saved;
    options.serialize = false only keeps a widget out of the API prompt, as the seed's control widget)."""
    return page.evaluate("""() => Object.fromEntries(app.graph.nodes.map(node => [String(node.id),
        (node.widgets ?? []).filter(w => w.serialize !== false).map(w => w.value)]))""")


def check_widgets_survive(page, name: str) -> None:
    """The shipped workflow `name` (saved on ComfyUI 0.8) dropped onto this frontend: every widget value on the
    canvas equals the file's, node by node (users' complaint: values shifted or reset after core updates)."""
    path = WORKFLOWS / f"{name}.json"
    drop_workflow(page, path)
    nodes = json.loads(path.read_text(encoding="utf-8"))["nodes"]
    saved = {str(n["id"]): n.get("widgets_values", []) for n in nodes}
    ours = {str(n["id"]) for n in nodes if n["type"] in OUR_NODES}
    shown = widgets_on_canvas(page)
    assert sorted(shown) == sorted(saved)
    # our nodes: exactly the file's values; a core node may have gained a widget since 0.8 (0.20.1's Preview as
    # Text has one more), after the ones the file saved, which keep their places and values
    differ = {node: (saved[node], shown[node]) for node in saved if isinstance(saved[node], list)
              and (saved[node] != shown[node] if node in ours else saved[node] != shown[node][:len(saved[node])])}
    assert differ == {}, f"{name}: node id -> (file, canvas): {differ}"
    assert ours and all(saved[node] for node in ours)
    assert sum(len(v) for v in shown.values()) >= 3  # widgets were read, not an empty graph


@pytest.mark.parametrize("name", SHIPPED)
def test_browser_shipped_workflow_widgets_survive(page, name):  # noqa: F811
    """On the frontend each host ships (0.8: 1.35.9; 0.20.1: 1.42.x)."""
    check_widgets_survive(page, name)


@pytest.mark.parametrize("name", ["rsvl_full_two_stage", "rsvl_stage1_only", "rsvl_refine_handwritten_caption"])
def test_browser_workflow_runs_and_shows_its_results(page, server, artifacts, name):  # noqa: F811
    drop_workflow(page, WORKFLOWS / f"{name}.json")
    shot(page, artifacts, f"{name}_loaded")
    assert titles_under_toolbar(page) == []
    set_widgets(page, {**TINY, "LoadRSVLModels": use_demo_models(server, name)})
    entry = run(page, server)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[-2000:]
    # the final image is shown on the last Save Image node
    last_save = max((n for n in page.evaluate("() => app.graph.nodes.map(n => ({id: n.id, type: n.type}))")
                     if n["type"] == "SaveImage"), key=lambda n: n["id"])
    page.wait_for_function("id => (app.graph.getNodeById(id).imgs ?? []).some(i => i.complete && i.naturalWidth > 0)",
                           arg=last_save["id"], timeout=30_000)
    saved = entry["outputs"][str(last_save["id"])]["images"][0]
    shown = page.evaluate("id => app.graph.getNodeById(id).imgs.map(i => [i.src, i.naturalWidth, i.naturalHeight])",
                          last_save["id"])
    assert any(saved["filename"] in src and (w, h) == (200, 200) for src, w, h in shown), shown
    outputs = json.dumps(entry["outputs"])
    if name == "rsvl_full_two_stage":
        caption_id = next(k for k, v in entry["outputs"].items() if "text" in v and "UNet calls" not in
                          v["text"][0] and not v["text"][0].startswith("ran:"))
        caption = entry["outputs"][caption_id]["text"][0]
        page.wait_for_function("t => [...document.querySelectorAll(\"[data-rsvl-text='LlavaRSCaption'] textarea\")]"
                               ".some(e => e.value === t)", arg=caption, timeout=10_000)
        assert caption.strip() and text_on_node(page, "LlavaRSCaption") == caption
    if name != "rsvl_stage1_only":
        report = text_on_node(page, "ControlNetRefine")
        assert report and "UNet calls" in report and "no steps run" not in report and report in outputs
    stage1_text = text_on_node(page, "Stage1FidelitySR")
    assert stage1_text and stage1_text.startswith("ran: ddim, 2 steps")
    settle(page)
    shot(page, artifacts, f"{name}_after_run")
    boxes = node_boxes(page)
    assert overlaps(boxes) == [], boxes
    assert titles_under_toolbar(page) == []
    assert page.page_errors == []


def test_browser_invalid_tile_setting_names_the_node_and_the_typed_value(page, server, artifacts):  # noqa: F811
    drop_workflow(page, WORKFLOWS / "rsvl_stage1_only.json")
    set_widgets(page, {"LoadRSVLModels": use_demo_models(server, "rsvl_stage1_only"),
                       "Stage1FidelitySR": {"tile_size": 224, "tile_overlap": 200}})
    stage1_id = page.evaluate("() => app.graph.nodes.find(n => n.type === 'Stage1FidelitySR').id")
    before = set(get(server, "/history"))
    press_run(page)
    message = page.get_by_text("tile_overlap 200", exact=False).first
    errors = page.get_by_role("button", name="See Errors")  # newer frontends first show a count of errors
    message.or_(errors).first.wait_for(state="visible", timeout=30_000)
    if not message.is_visible():
        errors.first.click()
    message.wait_for(state="visible", timeout=30_000)
    shot(page, artifacts, "invalid_tile_setting")
    dialog_text = page.locator("body").inner_text()
    assert f"{STAGE1} #{stage1_id}" in dialog_text and "tile_overlap 200 is more than half of tile_size 224" \
        in dialog_text and "at most 112" in dialog_text
    assert "Clone" not in dialog_text
    time.sleep(1)
    assert set(get(server, "/history")) == before  # rejected at validation: nothing ran


def open_search_box(page, tries: int = 6):
    """Double-click the empty canvas until the node search box shows, as a user clicks again when nothing opens.

    The canvas tells a double click from two clicks by the time between them, which a busy machine can stretch,
    so one lost gesture is retried rather than failing the test; the wait grows from 2 s to 15 s a try (a first
    gesture is sometimes lost on an idle machine too).
    """
    canvas = page.locator("#graph-canvas")
    search = page.get_by_role("combobox").or_(page.locator("input[placeholder*='Search']")).first
    for attempt in range(tries):
        if not search.is_visible():
            canvas.dblclick(position={"x": 700, "y": 500})
        try:
            search.wait_for(state="visible", timeout=min(2_000 * 2 ** attempt, 15_000))
            return search
        except playwright_api.TimeoutError:
            pass
    raise AssertionError(f"the node search box did not open after {tries} double clicks on the empty canvas")


CAPTION = "RSVL Caption: remote sensing (LLaVA)"
REFINE = "Super Resolution Refine: SUPIR (RSVL stage 2)"


# The words users type, the node each must find, and how near the top it must be (for "upscale" after
# ComfyUI's own six "Upscale ..." nodes, whose names start with the word and are shorter).
SEARCHES = [("upscale", STAGE1, 7), ("super resolution", REFINE, 3), ("sr3", STAGE1, 3), ("SUPIR", REFINE, 3),
            ("aerial", STAGE1, 3), ("satellite", STAGE1, 3), ("remote sensing", CAPTION, 3), ("caption", CAPTION, 3)]


def search_ranks(page, artifacts, query: str, expected: str, prefix: str) -> list[str]:
    """Type `query` into the node search box of an empty canvas; the result titles, in order, once `expected`
    shows."""
    page.evaluate("() => { app.graph.clear(); app.graph.setDirtyCanvas(true, true); }")  # an empty canvas
    search = open_search_box(page)
    search.fill(query)
    try:
        page.get_by_role("option").filter(has_text=expected).first.wait_for(state="visible", timeout=15_000)
    except playwright_api.TimeoutError:
        shot(page, artifacts, f"{prefix}_{query.replace(' ', '_')}_not_found")
        raise
    shot(page, artifacts, f"{prefix}_{query.replace(' ', '_')}")
    found = [o.split("\n")[0].strip() for o in page.get_by_role("option").all_inner_texts()]
    page.keyboard.press("Escape")
    return [title for title in found if title]  # 1.35.9 lists an empty option first


@pytest.mark.parametrize("query, expected, within", SEARCHES)
def test_browser_node_search_finds_the_nodes(page, artifacts, query, expected, within):
    """The words users type find the node near the top (ComfyUI 0.8's frontend searches node ids and display
    names only, so each word is near the start of a display name)."""
    found = search_ranks(page, artifacts, query, expected, "search")
    assert any(expected in title for title in found[:within]), " | ".join(found)
