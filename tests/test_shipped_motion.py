"""The shipped toy motion file (echoreel_core/toy/shipped/echoreel_motion/toy_orbit.safetensors),
which the "EchoReel saved motion" example loads: it fits the shipped toy EchoReel weights, holds
the motion of the shipped toy reference as encoded for the example's prompts, and Load Motion lists
and loads it with nothing to download, as ComfyUI runs nodes (under torch.inference_mode)."""

from __future__ import annotations

import asyncio
import json

import torch

from comfyui_env import ROOT, import_pack_in_process
from echoreel_core.echoreel.weights import load_echoreel
from echoreel_core.motion import file_sha256, load_motion
from echoreel_core.motion.cli import main
from echoreel_core.toy.models import (SHIPPED_DIR, TOY_ECHOREEL_FILE, TOY_MOTION_CAPTION, TOY_MOTION_FILE,
                                      TOY_MOTION_PROMPT, TOY_REFERENCE_FILE, shipped)

MOTION_FILE = SHIPPED_DIR / TOY_MOTION_FILE
MOTION = MOTION_FILE.name
EXAMPLE = ROOT / "example_workflows" / "api" / "EchoReel saved motion.json"


def test_shipped_motion_fits_the_toy_weights_and_the_examples_prompts(tmp_path):
    echoreel = load_echoreel(shipped(TOY_ECHOREEL_FILE))
    motion = load_motion(MOTION_FILE, echoreel)  # refused with other weights
    prism = echoreel.config.prism  # one token a reference frame, as wide as its latent
    assert motion.cond.shape == motion.uncond.shape == (1, 16, prism.latent_channels * prism.latent_height * prism.latent_width)
    info = motion.info
    assert info["source_sha256"] == file_sha256(shipped(TOY_REFERENCE_FILE))
    assert (info["caption"], info["prompt"], info["negative_prompt"], info["stride"]) == (TOY_MOTION_CAPTION, TOY_MOTION_PROMPT, "", "4")
    assert MOTION_FILE.stat().st_size < 160_000
    # the example samples with the prompts the features were encoded for, and loads this file
    prompt = json.loads(EXAMPLE.read_text())
    texts = {v["_meta"]["title"]: v["inputs"]["text"] for v in prompt.values() if v["class_type"] == "CLIPTextEncode"}
    assert texts == {"Prompt": info["prompt"], "Negative prompt": info["negative_prompt"]}
    assert [v["inputs"]["motion_name"] for v in prompt.values() if v["class_type"] == "EchoReel_LoadMotion"] == [MOTION]
    # and it is what the README's command writes today (a changed toy model or Prism would need it again)
    again = tmp_path / MOTION
    assert main(["encode", str(shipped(TOY_REFERENCE_FILE)), "--caption", TOY_MOTION_CAPTION, "--prompt", TOY_MOTION_PROMPT,
                 "--out", str(again), "--threads", "1"]) == 0
    fresh = load_motion(again, load_echoreel(shipped(TOY_ECHOREEL_FILE)))
    for shipped_tensor, fresh_tensor in ((motion.cond, fresh.cond), (motion.uncond, fresh.uncond)):
        torch.testing.assert_close(shipped_tensor, fresh_tensor, rtol=1e-4, atol=1e-5)


def test_load_motion_lists_and_loads_the_shipped_file():
    pack = import_pack_in_process()
    asyncio.run(pack.comfy_entrypoint())
    import folder_paths

    nodes = {cls.define_schema().node_id: cls for cls in pack.nodes.NODES}
    load = nodes["EchoReel_LoadMotion"]
    options = next(i for i in load.define_schema().inputs if i.id == "motion_name").options
    assert MOTION in options and load.validate_inputs(MOTION) is True
    # the shipped folder comes after the user's: Save Motion writes to the first one
    paths = folder_paths.get_folder_paths("echoreel_motion")
    assert paths[-1] == str(SHIPPED_DIR / "echoreel_motion") and len(paths) >= 2
    with torch.inference_mode():  # as ComfyUI's executor runs every node
        (echoreel,) = nodes["EchoReel_LoadEchoReel"].execute(shipped(TOY_ECHOREEL_FILE).name)
        loaded = load.execute(MOTION, echoreel)
    features = loaded.args[0]
    assert features.info["prompt"] == TOY_MOTION_PROMPT
    assert torch.equal(features.cond, load_motion(MOTION_FILE, load_echoreel(shipped(TOY_ECHOREEL_FILE))).cond)
    assert f"prompt        {TOY_MOTION_PROMPT}" in loaded.ui.as_dict()["text"][0]
