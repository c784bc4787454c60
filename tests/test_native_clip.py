"""nodes/clip.py: the native ComfyUI CLIP built from a loaded video model's text encoder.

ComfyUI's own CLIP Text Encode node, run on `native_clip(model)`, must give the context the core
encoder gives (fp32 noise only: the two attention kernels sum in different orders), for every
family's tiny preset and the shipped toy model; the differences between ComfyUI's prompt
handling and the official tokenisation are each pinned by a test below.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from comfyui_env import import_pack_in_process

TOLERANCE = 1e-5  # measured max |diff| 1.8e-6 on these towers (2.9e-6 on full-size random ViT-H / ViT-L)
TINY = ["lvdm-short-t2v", "videocrafter1-t2v-512", "videocrafter2-t2v-512", "videocrafter1-i2v-512"]
PROMPTS = [
    "",
    "a corgi running on the beach",
    "Café crème, naïve Über-Ärger à la façon de Noël",
    "  A  photo\nof\tan ASTRONAUT riding a horse!!  ",
    "don't stop: 3.14, [square brackets] & the end",
    "日本語の猫 🐱",
]


@pytest.fixture(scope="module")
def comfy():
    pack = import_pack_in_process()
    import comfy.model_management
    import comfy.utils
    import nodes

    from comfyui_echoreel_pack.echoreel_core.loading.checkpoints import load_video_model
    from comfyui_echoreel_pack.echoreel_core.models.tokenizer import CLIPTokenizer
    from comfyui_echoreel_pack.echoreel_core.models.video_model import VideoModel
    from comfyui_echoreel_pack.echoreel_core.models.presets import tiny_preset
    from comfyui_echoreel_pack.echoreel_core.toy.models import TOY_MODEL_FILE, shipped
    from comfyui_echoreel_pack.nodes import clip as clip_module
    from comfyui_echoreel_pack.nodes.runtime import tokenizer_merges_path

    tokenizer = CLIPTokenizer(tokenizer_merges_path())  # open_clip need not be installed
    models = {}
    for name in TINY:
        torch.manual_seed(0)
        model = VideoModel(tiny_preset(name)).eval()
        with torch.no_grad():  # norms off 1/0 too, so that a swapped norm mapping shows
            for p in model.text_encoder.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        model.tokenizer = tokenizer
        models[name] = model
    toy = load_video_model(shipped(TOY_MODEL_FILE))
    toy.tokenizer = tokenizer
    models["toy"] = toy
    return dict(pack=pack, nodes=nodes, mm=comfy.model_management, utils=comfy.utils, clip=clip_module, models=models,
                clips={name: clip_module.native_clip(model) for name, model in models.items()})


def encode(comfy, clip, text):
    """CLIP Text Encode, the real ComfyUI node: (cond, pooled)."""
    [[cond, extra]] = comfy["nodes"].CLIPTextEncode().encode(clip, text)[0]
    return cond, extra["pooled_output"]


def core(comfy, name, text):
    return comfy["models"][name].encode_text([text])


def max_diff(a, b):
    return (a - b).abs().max().item()


ALL = TINY + ["toy"]


@pytest.mark.parametrize("name", ALL)
def test_clip_text_encode_equals_the_core_encoder(comfy, name):
    clip = comfy["clips"][name]
    width = comfy["models"][name].text_encoder.config.width
    for text in PROMPTS:
        cond, _ = encode(comfy, clip, text)
        reference = core(comfy, name, text)
        assert cond.shape == reference.shape == (1, 77, width), text
        assert cond.dtype == torch.float32
        assert max_diff(cond, reference) <= TOLERANCE, text


@pytest.mark.parametrize("name", ALL)
def test_conversion_sets_every_weight_and_leaves_none_over(comfy, name):
    """Missing or unexpected keys are none (logit_scale may be absent: CLIP-L has none)."""
    clip_module = comfy["clip"]
    encoder = comfy["models"][name].text_encoder
    _, prefix = clip_module.clip_target(encoder.config)
    state = clip_module.clip_state_dict(encoder, prefix, torch.float32)
    expected = set(comfy["clips"][name].cond_stage_model.state_dict())
    assert set(state) - expected == set()
    assert expected - set(state) <= {prefix + "logit_scale"}
    assert len(state) >= len(expected) - 1 > 0


def test_a_wrong_conversion_raises_instead_of_loading_silently(comfy, monkeypatch):
    model = comfy["models"]["videocrafter2-t2v-512"]
    convert = comfy["utils"].clip_text_transformers_convert

    def losing_a_norm(sd, prefix_from, prefix_to):
        sd = convert(sd, prefix_from, prefix_to)
        sd[prefix_to + "text_model.final_norm.weight"] = sd.pop(prefix_to + "text_model.final_layer_norm.weight")
        return sd

    monkeypatch.setattr(comfy["utils"], "clip_text_transformers_convert", losing_a_norm)
    with pytest.raises(ValueError, match="final_layer_norm.weight.*final_norm.weight"):
        comfy["clip"].native_clip(model)


def test_full_size_towers_get_comfyuis_own_sd2_and_sd1_classes(comfy):
    from comfy import sd1_clip
    from comfy.text_encoders import sd2_clip

    from comfyui_echoreel_pack.echoreel_core.models.text_encoders import CLIPTextConfig, OpenCLIPTextConfig

    target, prefix = comfy["clip"].clip_target(OpenCLIPTextConfig())
    assert (target.clip, target.tokenizer, prefix) == (sd2_clip.SD2ClipModel, sd2_clip.SD2Tokenizer, "clip_h.")
    target, prefix = comfy["clip"].clip_target(CLIPTextConfig())
    assert (target.clip, target.tokenizer, prefix) == (sd1_clip.SD1ClipModel, sd1_clip.SD1Tokenizer, "clip_l.")
    # any other size is ComfyUI's CLIP model sized by a dict config
    for name in ALL:
        assert type(comfy["clips"][name].cond_stage_model).__name__ == "_ClipModel"


def test_the_clip_offloads_like_comfyuis_text_encoders_in_float32_on_the_cpu(comfy):
    mm = comfy["mm"]
    clip = comfy["clips"]["videocrafter1-t2v-512"]
    assert clip.patcher.is_clip
    assert clip.patcher.load_device == mm.text_encoder_device()
    assert clip.patcher.offload_device == mm.text_encoder_offload_device()
    assert mm.is_device_cpu(clip.patcher.load_device)  # the tests run ComfyUI with --cpu
    assert {p.dtype for p in clip.cond_stage_model.parameters()} == {torch.float32}
    # a copy: ComfyUI may patch its weights without touching the core encoder's
    core_weights = {p.data_ptr() for p in comfy["models"]["videocrafter1-t2v-512"].text_encoder.parameters()}
    assert not core_weights & {p.data_ptr() for p in clip.cond_stage_model.parameters()}


def test_newer_comfyui_can_rebuild_the_clip_patcher(comfy):
    """Newer ComfyUI rebuilds a patcher through `cached_patcher_init` (hooks, multi-GPU); one
    without the field (0.3.75) gets none set, so nothing there can call a factory it never had."""
    from comfy.model_patcher import ModelPatcher

    clip = comfy["clips"]["toy"]
    init = getattr(clip.patcher, "cached_patcher_init", None)
    probe = ModelPatcher(torch.nn.Linear(1, 1), torch.device("cpu"), torch.device("cpu"))
    if not hasattr(probe, "cached_patcher_init"):
        assert init is None
        return
    patcher = init[0](*init[1], disable_dynamic=True)
    assert not patcher.is_dynamic() and patcher.is_clip
    assert patcher.model is not clip.patcher.model
    rebuilt = patcher.model.state_dict()
    assert all(torch.equal(rebuilt[k], v) for k, v in clip.cond_stage_model.state_dict().items())

def test_tokens_pad_as_the_official_towers_do(comfy):
    """OpenCLIP pads with 0, HF's CLIP-L with EOT; the empty prompt is [SOT, EOT, pad...]."""
    for name, pad in (("videocrafter2-t2v-512", 0), ("toy", 0), ("lvdm-short-t2v", 49407)):
        [ids] = comfy["clips"][name].tokenize("")[comfy["clips"][name].tokenizer.clip_name]
        assert [t for t, _ in ids] == [49406, 49407] + [pad] * 75, name


def test_layers_and_pooled_output_follow_the_official_towers(comfy):
    """OpenCLIP: penultimate layer then ln_final by default; CLIP Set Last Layer -1 gives the last
    layer (not VideoCrafter's); the pooled output is ln_final(last layer) at EOT @ text_projection."""
    from comfyui_echoreel_pack.echoreel_core.models.text_encoders import OpenCLIPTextEncoder

    name, text = "videocrafter2-t2v-512", "a red car"
    model, clip = comfy["models"][name], comfy["clips"][name]
    encoder = model.text_encoder
    last = OpenCLIPTextEncoder(dataclasses.replace(encoder.config, skip_last_layers=0)).eval()
    last.load_state_dict(encoder.state_dict())
    reference_last = last.encode([text], model.tokenizer)
    set_last_layer = comfy["nodes"].CLIPSetLastLayer().set_last_layer
    penultimate, _ = encode(comfy, set_last_layer(clip, -2)[0], text)
    assert max_diff(penultimate, core(comfy, name, text)) <= TOLERANCE
    final, pooled = encode(comfy, set_last_layer(clip, -1)[0], text)
    assert max_diff(final, reference_last) <= TOLERANCE
    assert max_diff(final, core(comfy, name, text)) > 0.1
    eot = model.tokenizer([text])[0].argmax()  # EOT (49407) is the largest id
    assert pooled.shape == (1, encoder.config.embed_dim)
    assert max_diff(pooled, reference_last[:, eot] @ encoder.text_projection) <= TOLERANCE
    # CLIP-L (HF has no projection): the pooled output is the last layer at EOT
    name = "lvdm-short-t2v"
    cond, pooled = encode(comfy, comfy["clips"][name], text)
    assert max_diff(pooled, cond[:, comfy["models"][name].tokenizer([text])[0].tolist().index(49407)]) <= TOLERANCE
    # the toy reads its last layer: Set Last Layer -1 is its default
    cond, _ = encode(comfy, set_last_layer(comfy["clips"]["toy"], -1)[0], text)
    assert max_diff(cond, core(comfy, "toy", text)) <= TOLERANCE


# ---- the differences between CLIP Text Encode and the official tokenisation, pinned ----------


@pytest.mark.parametrize("name", ["videocrafter2-t2v-512", "lvdm-short-t2v"])
def test_prompt_weighting_is_comfyuis_own(comfy, name):
    """ComfyUI parses (word:w) and (word) (=1.1): the parentheses are not tokens and a weight other
    than 1 moves the context; the core reads them as text. \\( \\) are literal; [ ] are literal."""
    clip = comfy["clips"][name]
    assert max_diff(encode(comfy, clip, "a (red:1.0) car")[0], core(comfy, name, "a red car")) <= TOLERANCE
    weighted = encode(comfy, clip, "a (red:1.2) car")[0]
    assert max_diff(weighted, core(comfy, name, "a red car")) > 0.01
    assert max_diff(weighted, core(comfy, name, "a (red:1.2) car")) > 0.01
    assert max_diff(encode(comfy, clip, "a (red) car")[0], core(comfy, name, "a red car")) > 0.01
    assert max_diff(encode(comfy, clip, r"a \(red\) car")[0], core(comfy, name, "a (red) car")) <= TOLERANCE
    assert max_diff(encode(comfy, clip, "a [red] car")[0], core(comfy, name, "a [red] car")) <= TOLERANCE


@pytest.mark.parametrize("name", ["videocrafter1-t2v-512", "lvdm-short-t2v"])
def test_long_prompts_give_more_77_token_chunks_in_comfyui_but_are_truncated_by_the_core(comfy, name):
    clip = comfy["clips"][name]
    for text in ("word " * 100, "word " * 73 + "qrstuvwxyz cat"):  # the 75-token boundary inside a segment
        cond, _ = encode(comfy, clip, text)
        assert cond.shape[1] == 154
        assert max_diff(cond[:, :77], core(comfy, name, text)) <= TOLERANCE
    cond, _ = encode(comfy, clip, "word " * 151)  # 75 + 75 + 1
    assert cond.shape[1] == 231
    # a segment of fewer than 8 tokens that crosses the boundary moves whole to the next chunk,
    # which leaves the first chunk padded early: it is no longer the truncated prompt
    text = "word " * 74 + "(big red:1.0) dog"
    cond, _ = encode(comfy, clip, text)
    assert cond.shape[1] == 154
    assert max_diff(cond[:, :77], core(comfy, name, "word " * 74 + "big red dog")) > 0.01
    assert max_diff(cond[:, :77], core(comfy, name, "word " * 74)) <= TOLERANCE


def test_text_cleaning_differs_html_entities_mojibake_and_special_token_spellings(comfy):
    """The core cleans the OpenCLIP way (ftfy, HTML unescaped twice) and maps <start_of_text> /
    <end_of_text> to their ids; ComfyUI's tokenizer (transformers' CLIPTokenizer) keeps entities
    and mojibake as text and maps HF's <|endoftext|> instead. Missing embeddings are dropped."""
    name = "videocrafter2-t2v-512"
    clip = comfy["clips"][name]

    def same(comfy_text, core_text):
        return max_diff(encode(comfy, clip, comfy_text)[0], core(comfy, name, core_text)) <= TOLERANCE

    assert same("rock & roll", "rock &amp; roll") and not same("rock &amp; roll", "rock &amp; roll")
    assert same("a <cat>", "a &lt;cat&gt;") and not same("a &lt;cat&gt;", "a &lt;cat&gt;")
    assert same("café", "cafÃ©") and not same("cafÃ©", "cafÃ©")
    assert not same("a <end_of_text> cat", "a <end_of_text> cat")
    assert not same("a <|endoftext|> cat", "a <|endoftext|> cat")
    # ComfyUI drops an embedding it cannot find (with a warning); the core reads the words
    text = "a cat embedding:not_there"
    assert same(text, "a cat") and not same(text, text)
