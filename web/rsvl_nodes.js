// rsvl node pack: what the nodes report is shown on the nodes themselves.
//  - LlavaRSCaption's caption, ControlNetRefine's report, Stage1FidelitySR's "what ran" line, what RSVLLoadScene
//    read and the file RSVLSaveGeoTIFF wrote arrive as
//    `ui.text` (ComfyUI's PreviewText) and are shown in a labelled, read-only text box on the node.
//  - The box is part of the node from the moment it is created, with a fixed height (long texts scroll), so the
//    node has its final size before a run and does not grow over its neighbours after one.
//  - The box is our own widget type: the classic canvas and "Modern Node Design (Nodes 2.0)" both show our
//    element itself. (A core type such as "customtext" is drawn by Nodes 2.0 with its own text area, which
//    does not see a value set here.)
//  - Texts sent while a node runs (progress_text, e.g. the CPU time estimate) are the frontend's own: it shows
//    them in its overlay, so they are not repeated here.
//  - With a DynamicStepScheduler connected, the widgets it replaces are relabelled "... (set by schedule)".
//  - Only the frontend's public extension API is used: `app` and the node's own `addDOMWidget`.
import { app } from "../../scripts/app.js";

const TEXT_WIDGET = "rsvl_text";
const TEXT_TYPE = "rsvl_text";
// what the box is called on each node, and how many lines it shows before it scrolls
const TEXT_BOXES = {
  LlavaRSCaption: { label: "caption", lines: 5 },
  ControlNetRefine: { label: "report", lines: 4 },
  Stage1FidelitySR: { label: "ran", lines: 3 },
  RSVLLoadScene: { label: "scene", lines: 3 },
  RSVLSaveGeoTIFF: { label: "written", lines: 2 },
};
const LINE_PX = 16;
const LABEL_PX = 18;
// widgets a connected schedule replaces, per node type
const SCHEDULED = { Stage1FidelitySR: ["sampler", "steps"], ControlNetRefine: ["steps"] };

function textOf(value) {
  if (Array.isArray(value)) return value.join("\n");
  return value == null ? "" : String(value);
}

function boxStyle() {
  if (document.getElementById("rsvl-text-style")) return;
  const style = document.createElement("style");
  style.id = "rsvl-text-style";
  style.textContent = `
    .rsvl-text { display: flex; flex-direction: column; gap: 2px; width: 100%; height: 100%; box-sizing: border-box;
                 min-height: 0; }
    .rsvl-text-label { font-size: 11px; line-height: ${LABEL_PX - 4}px; opacity: 0.75; padding: 0 4px;
                       white-space: nowrap; }
    .rsvl-text textarea { flex: 1 1 auto; min-height: 0; width: 100%; box-sizing: border-box; resize: none;
                          font-size: 11px; line-height: ${LINE_PX - 2}px; white-space: pre-wrap;
                          overflow-y: auto; }`;
  document.head.appendChild(style);
}

function addTextBox(node, kind) {
  const spec = TEXT_BOXES[kind];
  boxStyle();
  const box = document.createElement("div");
  box.className = "rsvl-text";
  box.dataset.rsvlText = kind;
  const label = document.createElement("div");
  label.className = "rsvl-text-label";
  label.textContent = spec.label;
  const area = document.createElement("textarea");
  area.className = "comfy-multiline-input";
  area.readOnly = true;
  area.rows = spec.lines;
  area.placeholder = `${spec.label}: shown after a run`;
  area.setAttribute("aria-label", spec.label);
  box.append(label, area);
  const height = LABEL_PX + spec.lines * LINE_PX + 12;
  box.style.height = `${height}px`;
  const widget = node.addDOMWidget(TEXT_WIDGET, TEXT_TYPE, box, {
    getValue: () => area.value,
    setValue: (value) => { area.value = textOf(value); },
    getMinHeight: () => height,
    getMaxHeight: () => height,
    getHeight: () => height,
    serialize: false, // not saved in the workflow, not sent to the server
  });
  widget.serialize = false;
  widget.label = spec.label;
  widget.textArea = area;
  return widget;
}

function showText(node, text) {
  const widget = node.widgets?.find((w) => w.name === TEXT_WIDGET);
  if (!widget) return;
  widget.textArea.value = text;
  node.setDirtyCanvas?.(true, true);
}

// Stage1FidelitySR with core's upscale model connected: a one-pass model has no sampler, steps or seed. They are
// relabelled as unused, and the seed's "control after generate" is set to fixed so that a randomized seed does
// not change the prompt (and re-run a deterministic model) on every queue.
const ONE_PASS_UNUSED = ["sampler", "steps", "seed"];

function isLinked(node, name) {
  const index = node.inputs?.findIndex((input) => input.name === name) ?? -1;
  return index >= 0 && node.isInputConnected(index);
}

function markScheduled(node) {
  const names = SCHEDULED[node.comfyClass ?? node.type];
  if (!names) return;
  const scheduled = isLinked(node, "schedule");
  const onePass = (node.comfyClass ?? node.type) === "Stage1FidelitySR" && isLinked(node, "upscale_model");
  for (const widget of node.widgets ?? []) {
    if (onePass && ONE_PASS_UNUSED.includes(widget.name)) {
      widget.label = `${widget.name} (unused by an upscale model)`;
      if (widget.name === "seed") {
        for (const control of widget.linkedWidgets ?? []) control.value = "fixed";
      }
    } else if (names.includes(widget.name) || ONE_PASS_UNUSED.includes(widget.name)) {
      widget.label = scheduled && names.includes(widget.name) ? `${widget.name} (set by schedule)` : undefined;
    }
  }
  node.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: "rsvl.NodeText",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (TEXT_BOXES[nodeData.name]) {
      const onNodeCreated = nodeType.prototype.onNodeCreated;
      nodeType.prototype.onNodeCreated = function () {
        const result = onNodeCreated?.apply(this, arguments);
        addTextBox(this, nodeData.name);
        return result;
      };
      const onExecuted = nodeType.prototype.onExecuted;
      nodeType.prototype.onExecuted = function (message) {
        onExecuted?.apply(this, arguments);
        if (message?.text != null) showText(this, textOf(message.text));
      };
    }
    if (SCHEDULED[nodeData.name]) {
      const onConnectionsChange = nodeType.prototype.onConnectionsChange;
      nodeType.prototype.onConnectionsChange = function () {
        onConnectionsChange?.apply(this, arguments);
        markScheduled(this);
      };
      const onConfigure = nodeType.prototype.onConfigure;
      nodeType.prototype.onConfigure = function () {
        onConfigure?.apply(this, arguments);
        markScheduled(this);
      };
    }
  },
});
