// Find Reference Video: show the chosen clips (name, score, caption) on the node after a run.
// The node returns them as ui text ({"text": [lines]}); ComfyUI's frontend shows such text only for
// its own nodes, so this adds a read-only multiline text widget (not saved) that every run fills.
import { app } from "../../../scripts/app.js";
import { ComfyWidgets } from "../../../scripts/widgets.js";

const NODE_ID = "EchoReel_FindReferenceVideo";
const WIDGET = "chosen_clips";

app.registerExtension({
  name: "EchoReel.FindReferenceVideo",
  async nodeCreated(node) {
    if (node.comfyClass !== NODE_ID) return;
    const onExecuted = node.onExecuted;
    node.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      let widget = this.widgets?.find((w) => w.name === WIDGET);
      if (!widget) {
        widget = ComfyWidgets.STRING(this, WIDGET, ["STRING", { multiline: true }], app).widget;
        widget.serialize = false; // neither saved in the workflow nor sent with the prompt
        if (widget.options) widget.options.serialize = false;
        if (widget.inputEl) {
          widget.inputEl.readOnly = true;
          widget.inputEl.style.opacity = 0.8;
        }
      }
      widget.value = (message?.text ?? []).join("\n");
      this.setDirtyCanvas?.(true, true);
    };
  },
});
