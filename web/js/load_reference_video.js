// Load Reference Video in the page: saved widget values back in their places, and after a run the
// source frames and times of what the preview plays.
//
// The page saves widget values by position, the video upload button's value ("image") after
// every input's widget. So each widget input the node gains (select, then window and duration)
// would receive that value when a workflow saved before is opened, and the server would refuse
// it. A saved list shorter than the node's widgets is such an older layout: its values fill the
// first inputs in order, its last value is the button's, and the newer widgets keep their
// defaults, which keep the older behaviour.
//
// The node returns its selection as ui text ({"text": [text]}); the frontend shows such text only
// for its own nodes, so a read-only text widget (not saved) shows it, as Find Reference Video's.
import { app } from "../../../scripts/app.js";
import { ComfyWidgets } from "../../../scripts/widgets.js";

const NODE_ID = "EchoReel_LoadReferenceVideo";
const TEXT_WIDGET = "selection";

function savedWidgets(node) {
  return (node.widgets ?? []).filter((w) => w.serialize !== false);
}

function restoreOlderLayout(node, values, defaults) {
  const widgets = savedWidgets(node);
  if (!Array.isArray(values) || values.length < 2 || values.length >= widgets.length) return;
  const button = widgets[widgets.length - 1];
  if (button.type !== "button") return; // not the layout this knows
  for (const widget of widgets.slice(values.length - 1, -1)) {
    if (widget.name in defaults) widget.value = defaults[widget.name];
  }
  button.value = values[values.length - 1];
}

function showSelection(node, message) {
  let widget = node.widgets?.find((w) => w.name === TEXT_WIDGET);
  if (!widget) {
    widget = ComfyWidgets.STRING(node, TEXT_WIDGET, ["STRING", { multiline: true }], app).widget;
    widget.serialize = false; // neither saved in the workflow nor sent with the prompt
    if (widget.options) widget.options.serialize = false;
    if (widget.inputEl) {
      widget.inputEl.readOnly = true;
      widget.inputEl.style.opacity = 0.8;
    }
  }
  widget.value = (message?.text ?? []).join("\n");
  node.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: "EchoReel.LoadReferenceVideo",
  async nodeCreated(node) {
    if (node.comfyClass !== NODE_ID) return;
    // a new node's widgets hold their defaults; a saved workflow's values come later (configure)
    const defaults = Object.fromEntries(savedWidgets(node).map((w) => [w.name, w.value]));
    const onConfigure = node.onConfigure;
    node.onConfigure = function (info) {
      const result = onConfigure?.apply(this, arguments);
      restoreOlderLayout(this, info?.widgets_values, defaults);
      return result;
    };
    const onExecuted = node.onExecuted;
    node.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      showSelection(this, message);
    };
  },
});
