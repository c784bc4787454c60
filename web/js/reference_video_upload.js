// Load Reference Video: an upload button that takes every container the pack decodes.
// ComfyUI's own video upload button offers only mp4 and webm, and drops files whose type is not
// video/* (GIF is image/gif), so this node gets a second button whose picker lists the pack's
// containers. The list must equal echoreel_core.video_io.VIDEO_EXTENSIONS (a test compares them).
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const NODE_ID = "EchoReel_LoadReferenceVideo";
const VIDEO_EXTENSIONS = [
  ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".gif", ".webp", ".3gp",
  ".ts", ".mts", ".m2ts", ".flv", ".mpg", ".mpeg", ".wmv", ".asf", ".mxf",
];

async function upload(file) {
  const body = new FormData();
  body.append("image", file); // ComfyUI's upload route takes any file under this field name
  body.append("type", "input");
  const response = await api.fetchApi("/upload/image", { method: "POST", body });
  if (response.status !== 200) {
    throw new Error(`${file.name}: upload failed (${response.status} ${response.statusText})`);
  }
  const saved = await response.json();
  return saved.subfolder ? `${saved.subfolder}/${saved.name}` : saved.name;
}

app.registerExtension({
  name: "EchoReel.ReferenceVideoUpload",
  async nodeCreated(node) {
    if (node.comfyClass !== NODE_ID) return;
    const combo = node.widgets?.find((w) => w.name === "video");
    if (!combo) return;
    const picker = document.createElement("input");
    picker.type = "file";
    picker.accept = VIDEO_EXTENSIONS.join(",");
    picker.style.display = "none";
    picker.dataset.echoreel = "reference-video-upload";
    document.body.append(picker);
    picker.onchange = async () => {
      const file = picker.files?.[0];
      picker.value = "";
      if (!file) return;
      try {
        const name = await upload(file);
        if (!combo.options.values.includes(name)) combo.options.values.push(name);
        combo.value = name;
        combo.callback?.(name);
        node.graph?.setDirtyCanvas(true);
      } catch (error) {
        app.extensionManager?.toast?.add({ severity: "error", summary: "Load Reference Video", detail: String(error) });
      }
    };
    const button = node.addWidget("button", "upload_any_video", null, () => picker.click(), { serialize: false });
    button.serialize = false; // the page saves every widget whose own serialize is not false
    button.label = "upload any video (mkv, avi, gif, webp, mpg, wmv, ...)";
    const removed = node.onRemoved;
    node.onRemoved = function () {
      picker.remove();
      return removed?.apply(this, arguments);
    };
  },
});
