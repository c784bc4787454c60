"""A real browser on the frontend that a test ComfyUI serves: Debian's chromium driven through
chromium-driver by selenium (installed by scripts/setup_browser.sh; nothing downloads a browser).

Headless, no sandbox (CI runs as root), no GPU, and no network beyond the loopback server: a
fresh profile and every background service off, so the page talks to the test server only.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import tempfile
import time

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WINDOW = (1600, 900)  # the window the example workflows are laid out for (the page fits them to any window)


def missing() -> list[str]:
    """What scripts/setup_browser.sh installs and this machine lacks."""
    lacking = [path for path in (CHROMIUM, CHROMEDRIVER) if not pathlib.Path(path).is_file()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        lacking.append("selenium (python)")
    return lacking


class Browser:
    """One headless chromium on one page of the frontend; `quit()` ends it and its profile."""

    def __init__(self, url: str, window: tuple[int, int] = WINDOW):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        lacking = missing()
        if lacking:
            raise RuntimeError(f"no browser: {', '.join(lacking)} missing; run `bash scripts/setup_browser.sh`")
        self.profile = tempfile.mkdtemp(prefix="echoreel-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
            "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-extensions", "--disable-default-apps",
            "--metrics-recording-only", "--password-store=basic", "--use-mock-keychain",
            f"--user-data-dir={self.profile}", f"--window-size={window[0]},{window[1]}",
            "--force-device-scale-factor=1", "--autoplay-policy=no-user-gesture-required",
        ):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        try:
            self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        except Exception:
            shutil.rmtree(self.profile, ignore_errors=True)
            raise
        self.driver.set_script_timeout(120)
        self.url = url
        self.open()

    def open(self) -> None:
        """Load the frontend and wait until its app has a graph and the node definitions."""
        self.driver.get(self.url)
        self.wait_for("return !!(window.app && window.app.graph && window.app.canvas && window.LiteGraph"
                      " && LiteGraph.registered_node_types['EchoReel_VideoCrafterSampler'])", 120, "the frontend")
        self.js("app.canvas.setDirty(true, true)")

    def js(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    def js_async(self, body: str, *args):
        """Run `body` (an async function body using `args`), return what it returns; errors raise."""
        result = self.driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            f"(async (args) => {{ {body} }})(Array.from(arguments).slice(0, -1))"
            ".then(value => done({value}), error => done({error: String(error && error.stack || error)}));",
            *args,
        )
        if "error" in result:
            raise RuntimeError(result["error"])
        return result.get("value")

    def wait_for(self, condition: str, timeout: float, what: str):
        deadline = time.time() + timeout
        while True:
            value = self.js(condition)
            if value:
                return value
            if time.time() > deadline:
                raise TimeoutError(f"{what}: not ready in {timeout:.0f} s")
            time.sleep(0.2)

    def load_workflow(self, workflow: dict, name: str = "example") -> None:
        """What opening a template does: app.loadGraphData(workflow, clean, restore view)."""
        self.js_async("await app.loadGraphData(args[0], true, true, args[1]);"
                      "await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));", workflow, name)

    def dialogs(self) -> list[str]:
        """The text of every open dialog (missing nodes or models, errors)."""
        return self.js("return Array.from(document.querySelectorAll('.p-dialog')).map(d => d.innerText)")

    def close_dialogs(self) -> None:
        self.js("document.querySelectorAll('.p-dialog .p-dialog-close-button').forEach(b => b.click())")

    def graph(self) -> dict:
        """The loaded graph as the page sees it: every node's bounding box (title bar included),
        its own size, the size its widgets need (computeSize), its widgets' positions, and the view."""
        return self.js(
            """
            const canvas = app.canvas;
            const nodes = app.graph.nodes.map(node => {
              const box = new Float32Array(4);
              node.getBounding(box);
              const need = node.computeSize();
              return {
                id: node.id, type: node.type, title: node.title, box: Array.from(box),
                pos: Array.from(node.pos), size: Array.from(node.size), need: Array.from(need),
                collapsed: !!(node.flags && node.flags.collapsed), mode: node.mode,
                widgets: (node.widgets || []).map(w => ({name: w.name, type: w.type, y: w.y ?? w.last_y ?? null,
                  height: w.computeSize ? w.computeSize(node.size[0])[1] : LiteGraph.NODE_WIDGET_HEIGHT,
                  hidden: !!(w.hidden || (w.options && w.options.hidden)), value: w.value})),
                inputs: (node.inputs || []).map(i => ({name: i.name, type: i.type, link: i.link})),
                outputs: (node.outputs || []).map(o => ({name: o.name, type: o.type, links: o.links || []})),
              };
            });
            const rect = canvas.canvas.getBoundingClientRect();
            return {nodes, scale: canvas.ds.scale, offset: Array.from(canvas.ds.offset),
                    canvas: [rect.left, rect.top, rect.width, rect.height],
                    low_quality: canvas.low_quality, title_height: LiteGraph.NODE_TITLE_HEIGHT};
            """
        )

    def screenshot(self, path) -> None:
        self.js("app.canvas.setDirty(true, true)")
        time.sleep(0.3)
        self.driver.save_screenshot(str(path))

    def console_errors(self) -> list[str]:
        return [entry["message"] for entry in self.driver.get_log("browser") if entry["level"] == "SEVERE"]

    def quit(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)


def dump(value) -> str:
    return json.dumps(value, indent=1)[:4000]
