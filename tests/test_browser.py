"""The frontend that ComfyUI serves, in a real browser (Debian's chromium, driven by selenium).

Every example workflow is opened the way a user opens it, from the template browser's card, on
a ComfyUI where the toy files are present and the image-to-video files are not: no missing-node
dialog and no schema warning; only the image-to-video template reports its two missing model
files. At the view the page opens it at (a 1600x900 window), the whole graph is on the canvas and
drawn in full (not the low-detail drawing of far zoom), no two nodes (title bars included)
overlap, every node is as large as its widgets need (the page's own computeSize: nothing grows on
opening), every widget lies inside its node, and no title, label or value is cut short. Text to
video (core CLIP Text Encode and KSampler on the native MODEL) then runs from the page's Run button
to the video preview of its Save Video node.

The set-up (scripts/setup_browser.sh, run by scripts/test.sh) installs the browser: without it
this fails, it never skips. ECHOREEL_SCREENSHOTS=<folder> keeps a screenshot of each step.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import re
import time
import urllib.parse

import pytest
from PIL import Image

from browser import Browser, missing
from comfyui_env import ROOT
from comfyui_server import EXAMPLES, PACK_DIR, load, serve

NAMES = [path.stem for path in sorted(EXAMPLES.glob("*.json"))]
RUN = "EchoReel text to video"


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    lacking = missing()
    assert not lacking, f"no browser: {', '.join(lacking)}; run `bash scripts/setup_browser.sh` (scripts/test.sh does)"
    server = serve(tmp_path_factory.mktemp("browser_comfyui"), tiny_weights=False)
    browser = None
    try:
        # a returning user: no first-run template dialog over the canvas
        assert server.post("/settings/Comfy.TutorialCompleted", True)[0] == 200
        browser = Browser(server.url)
        yield server, browser
    finally:
        if browser is not None:
            browser.quit()
        server.stop()


def screenshot(browser: Browser, name: str) -> None:
    folder = os.environ.get("ECHOREEL_SCREENSHOTS")
    if folder:
        pathlib.Path(folder).mkdir(parents=True, exist_ok=True)
        browser.screenshot(pathlib.Path(folder) / f"{name}.png")


def open_template_browser(browser: Browser) -> None:
    browser.js_async("await app.extensionManager.command.execute('Comfy.BrowseTemplates');")
    browser.wait_for("return Array.from(document.querySelectorAll('.p-dialog span'))"
                     f".some(e => e.innerText.trim() === {json.dumps(PACK_DIR)})", 30, "the template browser")
    browser.js("Array.from(document.querySelectorAll('.p-dialog span'))"
               f".find(e => e.innerText.trim() === {json.dumps(PACK_DIR)}).click()")
    browser.wait_for(f"return document.querySelectorAll('[data-testid^=\"template-workflow-\"]').length === {len(NAMES)}",
                     30, "the pack's template cards")


def open_template(browser: Browser, name: str) -> None:
    """Click the template's card, as a user does, and wait until its graph is on the canvas."""
    nodes = len(load(EXAMPLES / f"{name}.json")["nodes"])
    open_template_browser(browser)
    browser.js(f"document.querySelector('[data-testid=\"template-workflow-{name}\"]').click()")
    browser.wait_for(f"return app.graph.nodes.length === {nodes} && !document.querySelector('[data-testid=\"template-workflows-content\"]')",
                     60, f"{name} on the canvas")
    # the page fits the view on the next frame; upload widgets then load their previews, which
    # sets what their nodes need: wait until nothing changes for a second
    browser.js_async("""
        for (let i = 0; i < 100; i++) {
          if (Array.from(document.querySelectorAll('video')).every(v => v.readyState >= 1 || !v.getAttribute('src'))) break;
          await new Promise(r => setTimeout(r, 100));
        }
        let last = '', steady = 0;
        for (let i = 0; i < 60 && steady < 4; i++) {
          const now = JSON.stringify(app.graph.nodes.map(n => [n.size, n.computeSize()]));
          steady = now === last ? steady + 1 : 0;
          last = now;
          app.canvas.setDirty(true, true);
          await new Promise(r => setTimeout(r, 250));
        }""")


# what the page knows about each node: the size its widgets need, the widths its title and each
# widget's label and value need (as the frontend's drawTruncatingText measures them), where each
# widget and each DOM element (text boxes, previews) lies
MEASURE_JS = r"""
const ctx = document.createElement('canvas').getContext('2d');
const TH = LiteGraph.NODE_TITLE_HEIGHT;
const canvas = app.canvas, rect = canvas.canvas.getBoundingClientRect();
const toScreen = ([x, y]) => [(x + canvas.ds.offset[0]) * canvas.ds.scale + rect.left, (y + canvas.ds.offset[1]) * canvas.ds.scale + rect.top];
return {
  scale: canvas.ds.scale, low_quality: canvas.low_quality, title_height: TH,
  canvas: [rect.left, rect.top, rect.right, rect.bottom],
  nodes: app.graph.nodes.map(node => {
    ctx.font = node.titleFontStyle;
    const title = ctx.measureText(node.title).width + 2 * TH;
    ctx.font = node.innerFontStyle;
    const [left, top] = toScreen([node.pos[0], node.pos[1] - TH]);
    const [right, bottom] = toScreen([node.pos[0] + node.size[0], node.pos[1] + node.size[1]]);
    // a video preview asks computeSize for its node's width plus 104, whatever the width (its
    // minWidth is the node's own width), and the page sizes such a node itself once the preview
    // has loaded, 9-11 px shorter than computeSize says: there the preview must lie inside the
    // node (checked below with every DOM widget) and the node must not grow on opening
    const need = Array.from(node.computeSize());
    if ((node.widgets || []).some(w => w.computeLayoutSize && w.computeLayoutSize(node).minWidth >= node.size[0])) need.fill(0);
    return {
      id: node.id, type: node.type, title: node.title, registered: node.type in LiteGraph.registered_node_types,
      pos: Array.from(node.pos), size: Array.from(node.size), need,
      title_need: title, collapsed: !!node.flags?.collapsed, screen: [left, top, right, bottom],
      widgets: (node.widgets || []).filter(w => !w.hidden && node.isWidgetVisible?.(w) !== false).map(w => {
        const text = ['combo', 'number', 'text', 'toggle'].includes(w.type) && !w.options?.multiline
          ? ctx.measureText(w.label || w.name).width + 5 + ctx.measureText(String(w.value)).width + 4 * 15 + 5 + 20 : 0;
        const element = w.element && w.element.isConnected ? w.element.getBoundingClientRect() : null;
        return {name: w.name, type: w.type, y: w.y ?? w.last_y, height: w.computedHeight ?? w.computeSize?.(node.size[0])?.[1] ?? LiteGraph.NODE_WIDGET_HEIGHT,
                text_need: text, element: element && element.width > 0 ? [element.left, element.top, element.right, element.bottom] : null};
      }),
    };
  }),
};
"""


def layout_problems(state: dict, saved: dict) -> list[str]:
    """Everything wrong with the graph the page shows, against the file it came from."""
    problems = []
    th, nodes = state["title_height"], state["nodes"]
    saved_nodes = {n["id"]: n for n in saved["nodes"]}
    if state["low_quality"]:
        problems.append(f"the view's scale {state['scale']:.2f} draws nodes in low detail (widgets unreadable)")
    left, top, right, bottom = state["canvas"]
    for n in nodes:
        name = f"{n['title']} ({n['type']}, #{n['id']})"
        if not n["registered"]:
            problems.append(f"{name}: node type unknown to the page")
        if n["collapsed"]:
            problems.append(f"{name}: collapsed")
        file_size = saved_nodes[n["id"]]["size"]
        if any(abs(a - b) > 0.5 for a, b in zip(n["size"], file_size)):
            problems.append(f"{name}: grew on opening from {file_size} to {n['size']} (its widgets need {n['need']})")
        if any(a + 0.5 < b for a, b in zip(file_size, n["need"])):
            problems.append(f"{name}: saved at {file_size}, its widgets need {n['need']}")
        if n["title_need"] > n["size"][0] + 0.5:
            problems.append(f"{name}: title cut short ({n['size'][0]} wide, needs {n['title_need']:.0f})")
        x0, y0, x1, y1 = n["screen"]
        if x0 < left - 0.5 or y0 < top - 0.5 or x1 > right + 0.5 or y1 > bottom + 0.5:
            problems.append(f"{name}: outside the view ({[round(v) for v in n['screen']]} on a canvas {state['canvas']})")
        for w in n["widgets"]:
            if w["text_need"] > n["size"][0] + 0.5:
                problems.append(f"{name}: widget {w['name']} cut short ({n['size'][0]} wide, needs {w['text_need']:.0f})")
            if w["y"] is not None and w["y"] + w["height"] > n["size"][1] + 0.5:
                problems.append(f"{name}: widget {w['name']} ends at {w['y'] + w['height']}, below the node ({n['size'][1]})")
            if w["element"]:
                ex0, ey0, ex1, ey1 = w["element"]
                if ex0 < x0 - 1 or ey0 < y0 - 1 or ex1 > x1 + 1 or ey1 > y1 + 1:
                    problems.append(f"{name}: widget {w['name']}'s box {[round(v) for v in w['element']]} leaves the node {[round(v) for v in n['screen']]}")
    boxes = [(n, (n["pos"][0], n["pos"][1] - th, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])) for n in nodes]
    for i, (a, ra) in enumerate(boxes):
        for b, rb in boxes[i + 1:]:
            if ra[0] < rb[2] and rb[0] < ra[2] and ra[1] < rb[3] and rb[1] < ra[3]:
                problems.append(f"{a['title']} #{a['id']} {ra} overlaps {b['title']} #{b['id']} {rb}")
    return problems


def toasts(browser: Browser) -> list[str]:
    return browser.js("return Array.from(document.querySelectorAll('.p-toast-message')).map(t => t.innerText)")


def test_every_script_of_the_pack_loads(page):
    """Each web/js file is served from /extensions/<pack>/js/ and its imports resolve from there
    (ComfyUI's scripts are three folders up): its extension is registered, and loading the page
    logged no error about the pack's scripts (a 404 import fails the whole module)."""
    server, browser = page
    scripts = sorted((ROOT / "web" / "js").glob("*.js"))
    names = [re.search(r'name: "(EchoReel\.[A-Za-z]+)"', path.read_text()).group(1) for path in scripts]
    registered = browser.js("return app.extensions.map(e => e.name)")
    assert set(names) <= set(registered), sorted(set(names) - set(registered))
    errors = [e for e in browser.console_errors() if "/extensions/" in e or "scripts/" in e]
    assert not errors, errors


def test_template_browser_shows_every_example_with_its_thumbnail(page):
    server, browser = page
    assert sorted(server.get("/workflow_templates")[PACK_DIR]) == NAMES  # example_workflows/api/ is not listed
    open_template_browser(browser)
    # a card loads its picture while it is in view (and may drop it once it is not)
    cards = browser.js_async("""const cards = [];
      for (const card of document.querySelectorAll('[data-testid^="template-workflow-"]')) {
        card.scrollIntoView();
        let img = null;
        for (let i = 0; i < 100; i++) {
          img = card.querySelector('img');
          if (img && img.complete && img.naturalWidth && img.src.startsWith('blob:')) break;
          await new Promise(r => setTimeout(r, 100));
        }
        cards.push([card.getAttribute('data-testid').slice('template-workflow-'.length), card.innerText,
                    img && img.src, img && img.complete && img.naturalWidth]);
      }
      return cards;""")
    screenshot(browser, "template_browser")
    assert sorted(card[0] for card in cards) == NAMES
    for name, text, src, width in cards:
        assert text.splitlines()[0] == name  # the title the card shows is the file name
        # the card shows <name>.jpg, served next to <name>.json (the page shows it from a blob:
        # URL; without the picture it falls back to its own default-template.png, 224 px wide)
        picture = Image.open(io.BytesIO(server.get(f"/api/workflow_templates/{PACK_DIR}/{urllib.parse.quote(name)}.jpg")))
        assert picture.format == "JPEG" and picture.width == 256
        assert src and src.startswith("blob:") and width == 256, (name, src, width)
    browser.js("document.querySelector('.p-dialog .p-dialog-close-button, .p-dialog button[aria-label=\"Close\"]')?.click()")


@pytest.mark.parametrize("name", NAMES)
def test_example_opens_laid_out_with_nothing_missing(page, name):
    server, browser = page
    open_template(browser, name)
    screenshot(browser, name)
    dialogs, notes = browser.dialogs(), toasts(browser)
    browser.close_dialogs()
    assert not notes, notes  # e.g. "Invalid workflow against zod schema"
    assert not any("missing" in d.lower() and "node" in d.lower() for d in dialogs), dialogs
    assert not dialogs, dialogs  # every example runs on shipped files: no missing-models dialog
    problems = layout_problems(browser.js(MEASURE_JS), load(EXAMPLES / f"{name}.json"))
    assert not problems, "\n".join(problems)


def test_workflow_runs_from_the_page_to_its_video_preview(page):
    server, browser = page
    open_template(browser, RUN)
    browser.close_dialogs()
    # fewer steps, as a user may set them, to keep the run short
    browser.js("app.graph.nodes.find(n => n.type === 'KSampler').widgets.find(w => w.name === 'steps').value = 5")
    before = set(server.get("/history"))
    browser.js("Array.from(document.querySelectorAll('button')).find(b => b.innerText.trim() === 'Run').click()")
    deadline = time.time() + 150
    while not (set(server.get("/history")) - before):
        assert time.time() < deadline, "the run from the page did not finish in 150 s"
        time.sleep(0.5)
    (prompt_id,) = set(server.get("/history")) - before
    entry = server.wait(prompt_id)
    assert entry["status"]["status_str"] == "success", entry["status"]
    (save,) = [k for k, v in entry["prompt"][2].items() if v["class_type"] == "SaveVideo"]
    (saved,) = entry["outputs"][save]["images"]
    assert saved["filename"].endswith(".mp4")
    # the Save Video node shows the mp4 it wrote, playable in the page
    preview = browser.wait_for(f"""
        const video = Array.from(document.querySelectorAll('video')).find(v => v.src.includes('filename={saved["filename"]}'));
        return video && video.readyState >= 2 && [video.videoWidth, video.videoHeight, video.duration];""", 60, "the video preview")
    screenshot(browser, "after_run")
    assert preview[:2] == [64, 64] and preview[2] == pytest.approx(16 / 8, abs=0.2)
