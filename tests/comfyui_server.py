"""A real ComfyUI server on 127.0.0.1 with this pack installed, for the end-to-end and browser
tests and for the scripts that lay out the example workflows and make their thumbnails.

`serve(base)` lays out a scratch ComfyUI folder (input, output, temp, custom_nodes with a link to
this repository, tiny random weights under the names the image-to-video workflow expects) and
starts `main.py` from scripts/setup_comfyui.sh's copy; `Server.stop()` ends it by its PID.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import pathlib
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from fractions import Fraction

import numpy as np
from PIL import Image

from comfyui_env import COMFYUI, ROOT, STUBS, require_comfyui, write_tiny_weights

EXAMPLES = ROOT / "example_workflows"
API_EXAMPLES = EXAMPLES / "api"
PACK_DIR = "ComfyUI-EchoReel"  # the folder name in custom_nodes/: the template browser's module name


class Server:
    """A ComfyUI process started here, spoken to over HTTP, stopped by its PID."""

    def __init__(self, base: pathlib.Path, timeout: float = 180):
        self.base = base
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        paths = base / "extra_model_paths.yaml"
        paths.write_text(
            "echoreel_tests:\n"
            f"  base_path: {base}\n"
            "  videocrafter: models/videocrafter\n"
            "  echoreel: models/echoreel\n"
            "  custom_nodes: custom_nodes\n"
        )
        env = dict(os.environ, PYTHONPATH=str(STUBS))
        self.log = open(base / "server.log", "w")
        self.process = subprocess.Popen(
            [
                sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
                "--output-directory", str(base / "output"), "--temp-directory", str(base / "temp"),
                "--input-directory", str(base / "input"), "--user-directory", str(base / "user"),
                "--extra-model-paths-config", str(paths), "--disable-auto-launch",
            ],
            cwd=COMFYUI, env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                answer = self.get("/object_info/EchoReel_VideoCrafterSampler")
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
                continue
            if answer:
                return
            self.stop()  # serving, without the pack
            raise RuntimeError(f"ComfyUI started without this pack's nodes:\n{self.log_tail()}")
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer in {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self) -> str:
        return (self.base / "server.log").read_text()[-4000:]

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            body = response.read()
        return json.loads(body) if body[:1] in (b"{", b"[") else body

    def post(self, path: str, payload: dict) -> tuple[int, dict]:
        request = urllib.request.Request(self.url + path, json.dumps(payload).encode(), {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                body = response.read()
                return response.status, json.loads(body) if body else {}
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")

    def queue(self, prompt: dict) -> str:
        status, answer = self.post("/prompt", {"prompt": prompt})
        assert status == 200, answer
        return answer["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 900) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history:
                return history[prompt_id]
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI died:\n{self.log_tail()}")
            time.sleep(0.25)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s:\n{self.log_tail()}")

    def queue_and_interrupt_while_sampling(self, prompt: dict, steps: int) -> str:
        """Queue, watch the sampler's progress on the websocket, POST /interrupt at step 2."""
        import aiohttp

        async def go() -> str:
            client_id = uuid.uuid4().hex
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(f"{self.url}/ws?clientId={client_id}") as ws:
                    async with session.post(f"{self.url}/prompt", json={"prompt": prompt, "client_id": client_id}) as reply:
                        prompt_id = (await reply.json())["prompt_id"]
                    async for message in ws:
                        if message.type != aiohttp.WSMsgType.TEXT:
                            continue
                        data = json.loads(message.data)
                        if data["type"] == "progress" and data["data"]["max"] == steps and data["data"]["value"] >= 2:
                            async with session.post(f"{self.url}/interrupt", json={}) as reply:
                                assert reply.status == 200
                            return prompt_id
            raise RuntimeError("the websocket closed before sampling progressed")

        return asyncio.run(asyncio.wait_for(go(), timeout=600))

    def run(self, prompt: dict) -> dict:
        entry = self.wait(self.queue(prompt))
        assert entry["status"]["status_str"] == "success", messages(entry)
        return entry

    def output_file(self, entry: dict, node_id: str) -> tuple[dict, bytes]:
        """The one file a Save node wrote ({filename, subfolder, type}), and its bytes from /view."""
        (saved,) = entry["outputs"][node_id]["images"]
        query = urllib.parse.urlencode({"filename": saved["filename"], "subfolder": saved["subfolder"], "type": saved["type"]})
        return saved, self.get(f"/view?{query}")

    def video(self, entry: dict, node_id: str) -> "Video":
        """The mp4 a Save Video node wrote, decoded."""
        saved, data = self.output_file(entry, node_id)
        assert saved["filename"].endswith(".mp4"), saved
        return read_mp4(data)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


class Video:
    """A decoded video file: frames (t, h, w, 3) uint8, the stream's frame rate and codec."""

    def __init__(self, frames: np.ndarray, fps: Fraction, codec: str, container_frames: int):
        self.frames, self.fps, self.codec, self.container_frames = frames, fps, codec, container_frames


def read_mp4(data: bytes) -> Video:
    import av

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(stream)])
        return Video(frames, Fraction(stream.average_rate), stream.codec_context.name, stream.frames)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def messages(entry: dict) -> str:
    """Message types, and for errors the node, exception type and message (not the input dumps)."""
    parts = []
    for kind, data in entry["status"].get("messages", []):
        parts.append(kind)
        if kind == "execution_error":
            parts += [data.get("node_type", ""), data.get("exception_type", ""), data.get("exception_message", "")]
    return " | ".join(parts)


def serve(base: pathlib.Path, tiny_weights: bool = True) -> Server:
    """A scratch ComfyUI folder in `base` with this pack linked in, and the server on it. The toy
    files come from the pack itself; with `tiny_weights`, the image-to-video workflow's files are
    tiny random weights and a random first frame (without, that workflow's files are missing, as
    they are for a user)."""
    require_comfyui()
    for folder in ("input", "output", "temp", "custom_nodes", "user"):
        (base / folder).mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / PACK_DIR
    if not link.exists():
        link.symlink_to(ROOT, target_is_directory=True)
    if not tiny_weights:
        return Server(base)
    write_tiny_weights(base / "models")
    Image.fromarray((np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8)).save(base / "input" / "first_frame.png")
    return Server(base)


def load(path) -> dict:
    return json.loads(pathlib.Path(path).read_text())


def api_copy(ui_path: pathlib.Path) -> pathlib.Path:
    return API_EXAMPLES / ui_path.name


def ui_examples() -> list[pathlib.Path]:
    return sorted(EXAMPLES.glob("*.json"))
