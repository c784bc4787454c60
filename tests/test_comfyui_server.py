"""End to end: a real ComfyUI server on 127.0.0.1 runs every example workflow: the text-to-video
ones on the shipped toy model (found with nothing downloaded), image-to-video on tiny weights."""

from __future__ import annotations

import asyncio
import copy
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import aiohttp
import numpy as np
import pytest
from PIL import Image, ImageSequence

from comfyui_env import COMFYUI, LVDM_ECHOREEL_FILE, ROOT, STUBS, require_comfyui, write_tiny_weights

WORKFLOWS = ROOT / "workflows"
API_WORKFLOWS = sorted((WORKFLOWS / "api").glob("*.json"))
# the toy workflows run at their own size (64x64, 16 frames) with fewer steps
QUICK = {
    "EchoReel_VideoCrafterSampler": {"steps": 4, "seed": 5},
    "EchoReel_LongVideoSampler": {"steps": 3, "seed": 5, "clips": 2},
}
# the image-to-video workflow names VideoCrafter1 I2V files: tiny random ones of 32x32, 4 frames
TINY_I2V = {
    "EchoReel_LoadReferenceVideo": {"frames": 4, "width": 32, "height": 32},
    "EchoReel_VideoCrafterSampler": {"frames": 4, "width": 32, "height": 32, "cfg": 7.5},
}


class Server:
    """A ComfyUI process started by this test, spoken to over HTTP, stopped by its PID."""

    def __init__(self, base):
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
                "--input-directory", str(base / "input"), "--extra-model-paths-config", str(paths),
                "--disable-auto-launch",
            ],
            cwd=COMFYUI, env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                self.get("/object_info/EchoReel_VideoCrafterSampler")
                return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer in 180 s:\n{self.log_tail()}")

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
        assert entry["status"]["status_str"] == "success", _messages(entry)
        return entry

    def frames(self, entry: dict, node_id: str) -> np.ndarray:
        """The animated WEBP a SaveAnimatedWEBP node wrote, as (t, h, w, 3) uint8, fetched with /view."""
        (image,) = entry["outputs"][node_id]["images"]
        query = urllib.parse.urlencode({"filename": image["filename"], "subfolder": image["subfolder"], "type": image["type"]})
        data = self.get(f"/view?{query}")
        with Image.open(io.BytesIO(data)) as webp:
            return np.stack([np.array(frame.convert("RGB")) for frame in ImageSequence.Iterator(webp)])

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _messages(entry: dict) -> str:
    """Message types, and for errors the node, exception type and message (not the input dumps)."""
    parts = []
    for kind, data in entry["status"].get("messages", []):
        parts.append(kind)
        if kind == "execution_error":
            parts += [data.get("node_type", ""), data.get("exception_type", ""), data.get("exception_message", "")]
    return " | ".join(parts)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    require_comfyui()
    base = tmp_path_factory.mktemp("comfyui_server")
    for folder in ("input", "output", "temp", "custom_nodes"):
        (base / folder).mkdir()
    (base / "custom_nodes" / "ComfyUI-EchoReel").symlink_to(ROOT, target_is_directory=True)
    write_tiny_weights(base / "models")  # the toy files come from the pack itself
    Image.fromarray((np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8)).save(base / "input" / "first_frame.png")
    (base / "input" / "broken.mp4").write_bytes(b"\x00not a video" * 100)
    started = Server(base)
    yield started
    started.stop()


def quick(prompt: dict, **overrides) -> dict:
    """The API workflow with fewer steps (and the I2V one at the tiny weights' size), plus
    per-class overrides {class_type: {input: value}}."""
    prompt = copy.deepcopy(prompt)
    i2v = any(node["class_type"] == "LoadImage" for node in prompt.values())
    for node in prompt.values():
        node.pop("_meta", None)
        for changes in (QUICK, TINY_I2V if i2v else {}, overrides):
            node["inputs"].update(changes.get(node["class_type"], {}))
    return prompt


def load(path) -> dict:
    return json.loads(path.read_text())


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """What the frontend's 'Save (API)' does: links become [node, slot], widget values are matched
    to the widget inputs of /object_info in order (a seed's control widget and an upload button
    each add one saved value)."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        info = object_info[node["type"]]["input"]
        inputs, values = {}, list(node["widgets_values"])
        for name, spec in [(k, v) for group in ("required", "optional") for k, v in info.get(group, {}).items()]:
            kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
            # V1 nodes list combos as ([...], {}); V3 nodes (newest ComfyUI) as ("COMBO", {"options": [...]})
            if isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"):
                inputs[name] = values.pop(0)
                if options.get("control_after_generate") or name in ("seed", "noise_seed"):
                    assert values.pop(0) in ("fixed", "increment", "decrement", "randomize")
                if options.get("image_upload") or options.get("video_upload"):
                    values.pop(0)
            else:
                socket = next((i for i in node["inputs"] if i["name"] == name), None)
                if socket is not None and socket["link"] is not None:
                    link = links[socket["link"]]
                    inputs[name] = [str(link[1]), link[2]]
        assert not values, f"{node['type']}: {len(values)} widget values left over"
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def test_every_node_is_registered(server):
    info = server.get("/object_info")
    ours = {k: v for k, v in info.items() if k.startswith("EchoReel_")}
    assert len(ours) == 8
    # the shipped toy model is listed and its reference video was put into the input folder
    kind, options = info["EchoReel_LoadVideoCrafterCheckpoint"]["input"]["required"]["ckpt_name"]
    assert kind == "COMBO" and "videocrafter2_toy.safetensors" in options["options"]  # the V3 combo form
    assert (server.base / "input" / "toy_reference.mp4").is_file()
    assert all(v["category"].startswith("EchoReel") and v["description"] for v in ours.values())


@pytest.mark.parametrize("api_path", API_WORKFLOWS, ids=lambda p: p.stem)
def test_ui_workflow_matches_object_info_and_converts_to_its_api_copy(server, api_path):
    info = server.get("/object_info")
    workflow = load(WORKFLOWS / api_path.name)
    assert workflow["version"] == 0.4
    for node in workflow["nodes"]:
        assert node["type"] in info, node["type"]
    expected = {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in load(api_path).items()}
    assert ui_to_api(workflow, info) == expected
    assert workflow["extra"]["echoreel_models"]["videocrafter"].endswith(".safetensors")


@pytest.mark.parametrize("api_path", API_WORKFLOWS, ids=lambda p: p.stem)
def test_api_workflow_runs(server, api_path):
    prompt = quick(load(api_path))
    entry = server.run(prompt)
    saves = [k for k, v in prompt.items() if v["class_type"] == "SaveAnimatedWEBP"]
    assert saves
    for node_id in saves:
        frames = server.frames(entry, node_id)
        sampler = prompt[prompt[node_id]["inputs"]["images"][0]]["inputs"]
        assert frames.shape == (sampler["frames"] * sampler.get("clips", 1), sampler["height"], sampler["width"], 3)
        assert (server.base / "output" / entry["outputs"][node_id]["images"][0]["filename"]).is_file()
        assert frames.std() > 0


def test_side_by_side_halves_differ(server):
    prompt = quick(load(WORKFLOWS / "api" / "echoreel_side_by_side.json"))
    entry = server.run(prompt)
    with_echoreel, without = server.frames(entry, "10"), server.frames(entry, "12")
    assert np.abs(with_echoreel.astype(int) - without.astype(int)).max() > 0


def test_interrupt_leaves_nothing_behind(server):
    """Cancel mid-sampling, queue again: the result equals an uninterrupted run, and the same
    (cached) model then samples exactly as a fresh one that never had EchoReel."""
    base = load(WORKFLOWS / "api" / "echoreel_side_by_side.json")
    slow = {"EchoReel_VideoCrafterSampler": {"steps": 8}}
    echo_only = {k: v for k, v in quick(base, **slow).items() if k not in ("11", "12")}
    interrupted = server.wait(server.queue_and_interrupt_while_sampling(echo_only, steps=8))
    assert interrupted["status"]["status_str"] == "error"
    assert "execution_interrupted" in _messages(interrupted)

    again = server.frames(server.run(echo_only), "10")
    # the same graph on fresh objects (fp32 is auto's choice on a CPU, so only the cache key differs)
    fresh = quick(base, **slow, EchoReel_LoadVideoCrafterCheckpoint={"dtype": "fp32"})
    fresh_entry = server.run({k: v for k, v in fresh.items() if k not in ("11", "12")})
    assert np.array_equal(again, server.frames(fresh_entry, "10"))

    # the model that was interrupted while EchoReel was attached, now without EchoReel...
    without = {k: v for k, v in quick(base, **slow).items() if k in ("1", "2", "3", "11", "12")}
    cached_model = server.frames(server.run(without), "12")
    # ...equals a model that never saw EchoReel
    never = {k: v for k, v in fresh.items() if k in ("1", "2", "3", "11", "12")}
    never["12"]["inputs"]["filename_prefix"] = "never"
    assert np.array_equal(cached_model, server.frames(server.run(never), "12"))


def test_bad_inputs_fail_clearly_and_the_server_keeps_serving(server):
    base = load(WORKFLOWS / "api" / "echoreel_text_to_video.json")
    status, answer = server.post("/prompt", {"prompt": quick(base, EchoReel_LoadVideoCrafterCheckpoint={"ckpt_name": "absent.safetensors"})})
    assert status == 400 and "absent.safetensors: not found in models/videocrafter, models/checkpoints" in json.dumps(answer)

    broken = server.wait(server.queue(quick(base, EchoReel_LoadReferenceVideo={"video": "broken.mp4"})))
    assert broken["status"]["status_str"] == "error"
    assert "broken.mp4" in _messages(broken) and "VideoReadError" in _messages(broken)

    wrong = server.wait(server.queue(quick(base, EchoReel_LoadEchoReel={"echoreel_name": LVDM_ECHOREEL_FILE})))
    assert wrong["status"]["status_str"] == "error"
    # weights for another model are refused at their first use, with the size they need
    assert "ActionPrismEncode" in _messages(wrong) and "these EchoReel weights need 128x128" in _messages(wrong)

    # still serving: a good prompt runs
    good = server.run(quick(base, SaveAnimatedWEBP={"filename_prefix": "after_errors"}))
    assert server.frames(good, "10").shape == (16, 64, 64, 3)

