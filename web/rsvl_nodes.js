// rsvl node pack: what the nodes report is shown on the nodes themselves.
//  - LlavaRSCaption's caption, ControlNetRefine's report and Stage1FidelitySR's "what ran" line arrive as
//    `ui.text` (ComfyUI's PreviewText) and are shown in a read-only text box on the node after each run;
//    progress_text messages (e.g. the CPU time warning) are shown in the same box while the node runs.
//  - With a DynamicStepScheduler connected, the widgets it replaces are relabelled "... (set by schedule)".
//  - Only the frontend's public extension API is used: `app`, `api` and the node's own `addDOMWidget`.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const TEXT_NODES = new Set(["LlavaRSCaption", "ControlNetRefine", "Stage1FidelitySR"]);
const TEXT_WIDGET = "rsvl_text";
// what the text box is called on the node (the classic canvas and "Nodes 2.0" show the label, not the name)
const TEXT_LABELS = { LlavaRSCaption: "caption", ControlNetRefine: "report", Stage1FidelitySR: "ran" };
// widgets a connected schedule replaces, per node type
const SCHEDULED = { Stage1FidelitySR: ["sampler", "steps"], ControlNetRefine: ["steps"] };

function textOf(value) {
  if (Array.isArray(value)) return value.join("\n");
  return value == null ? "" : String(value);
}

function showText(node, text) {
  let widget = node.widgets?.find((w) => w.name === TEXT_WIDGET);
  if (!widget) {
    const element = document.createElement("textarea");
    element.className = "comfy-multiline-input";
    element.readOnly = true;
    element.rows = 4;
    element.dataset.rsvlText = node.comfyClass ?? node.type;
    element.dataset.rsvlNode = String(node.id);
    widget = node.addDOMWidget(TEXT_WIDGET, "customtext", element, {
      getValue: () => element.value,
      setValue: (value) => { element.value = value; },
      serialize: false, // not saved in the workflow, not sent to the server
    });
    widget.serialize = false;
    widget.label = TEXT_LABELS[node.comfyClass ?? node.type] ?? "text";
    // make room for the text box once, by at most 120 px (a node must not grow far over what is placed below it)
    const wanted = node.computeSize();
    node.setSize([Math.max(node.size[0], wanted[0]), Math.max(node.size[1], Math.min(wanted[1], node.size[1] + 120))]);
  }
  widget.value = text;
  if (widget.element) widget.element.value = text;
  node.setDirtyCanvas?.(true, true);
}

// Stage1FidelitySR with core's upscale model connected: a one-pass model has no sampler, steps or seed. They are
// relabelled as unused, and the seed's "control after generate" is set to fixed so that a randomized seed does
// not change the prompt (and re-run a deterministic model) on every queue.
const ONE_PASS_UNUSED = ["sampler", "steps", "seed"];

function isLinked(node, name) {
  const slot = node.inputs?.find((input) => input.name === name);
  return slot != null && slot.link != null;
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
  async setup() {
    // texts sent while a node runs (the CPU time warning) are transient: a new run or Cancel clears them
    const transient = new Set();
    api.addEventListener("progress_text", ({ detail }) => {
      const node = app.graph?.getNodeById(Number(detail?.nodeId));
      if (node && TEXT_NODES.has(node.comfyClass ?? node.type)) {
        showText(node, detail.text);
        transient.add(node.id);
      }
    });
    const clearTransient = () => {
      for (const id of transient) {
        const node = app.graph?.getNodeById(id);
        if (node) showText(node, "");
      }
      transient.clear();
    };
    api.addEventListener("execution_start", clearTransient);
    api.addEventListener("execution_interrupted", clearTransient);
    api.addEventListener("executed", ({ detail }) => transient.delete(Number(detail?.node)));
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (TEXT_NODES.has(nodeData.name)) {
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
