"""Tiny random InternVL and Qwen2.5-VL models built offline from their configs (< 0.1 s each), a character
tokenizer whose specials include the image placeholders, and a `build_inputs` per model that turns a
Prompt (meta["image"]: float [H, W, 3]; text: the question) into (ids, prefill kwargs)."""
import string

import torch
from transformers import (InternVLConfig, InternVLForConditionalGeneration, Qwen2_5_VLConfig,
                          Qwen2_5_VLForConditionalGeneration)

from ttrl_fast.text import CharTokenizer
from ttrl_fast.tta.types import Prompt

TOKENIZER = CharTokenizer("ABCD" + string.ascii_lowercase[:20] + " ?",
                          specials=("<pad>", "<bos>", "<eos>", "<img>", "<vid>", "<vs>", "<ve>"))
PAD, BOS, EOS, IMG, VID, VSTART, VEND = range(7)
VOCAB = TOKENIZER.vocab_size
TEXT = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, bos_token_id=BOS, eos_token_id=EOS,
            pad_token_id=PAD, initializer_range=0.2)  # peaked enough that greedy paths vary
INTERNVL_SIZE, INTERNVL_PATCH = 28, 7  # 4 x 4 patches -> pixel shuffle 0.5 -> 4 image tokens
QWEN_PATCH, QWEN_MERGE, QWEN_TEMPORAL = 4, 2, 2


def tiny_internvl(seed=0, attn="sdpa"):
    torch.manual_seed(seed)
    config = InternVLConfig(
        vision_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                           image_size=[INTERNVL_SIZE] * 2, patch_size=[INTERNVL_PATCH] * 2),
        text_config=dict(model_type="qwen2", **TEXT), image_token_id=IMG, downsample_ratio=0.5,
        attn_implementation=attn)
    return InternVLForConditionalGeneration(config).eval()


def tiny_qwen25vl(seed=0, attn="sdpa"):
    torch.manual_seed(seed)
    config = Qwen2_5_VLConfig(
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
                           patch_size=QWEN_PATCH, spatial_merge_size=QWEN_MERGE, temporal_patch_size=QWEN_TEMPORAL,
                           window_size=16, fullatt_block_indexes=[0]),
        # head_dim 8 -> 4 rotary frequencies split (t, h, w) = (2, 1, 1)
        text_config=dict(**TEXT, rope_scaling=dict(type="mrope", mrope_section=[2, 1, 1])),
        image_token_id=IMG, video_token_id=VID, vision_start_token_id=VSTART, vision_end_token_id=VEND,
        attn_implementation=attn)
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def question_ids(prompt: Prompt) -> list[int]:
    return TOKENIZER.encode(prompt.text)


def internvl_inputs(prompt: Prompt):
    """[bos, <vs>, <img> x 4, <ve>, question]; pixel_values [1, 3, 28, 28]."""
    image = torch.as_tensor(prompt.meta["image"], dtype=torch.float32)
    tokens = (INTERNVL_SIZE // INTERNVL_PATCH) ** 2 // 4
    ids = [BOS, VSTART] + [IMG] * tokens + [VEND] + question_ids(prompt)
    return ids, {"pixel_values": image.permute(2, 0, 1)[None]}


def qwen_patches(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float [H, W, 3] -> (pixel_values [gh * gw, 3 * T * p * p] in merge-window order, grid_thw [1, 3]),
    the layout Qwen2-VL's image processor produces (the image repeated T times along time)."""
    height, width = image.shape[:2]
    p, m, t = QWEN_PATCH, QWEN_MERGE, QWEN_TEMPORAL
    gh, gw = height // p, width // p
    frames = image.permute(2, 0, 1)[None].expand(t, -1, -1, -1)  # [T, C, H, W]
    x = frames.reshape(1, t, 3, gh // m, m, p, gw // m, m, p).permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(gh * gw, 3 * t * p * p).contiguous(), torch.tensor([[1, gh, gw]])


def qwen_inputs(prompt: Prompt):
    """[bos, <vs>, <img> x (gh * gw / 4), <ve>, question]; pixel_values + image_grid_thw."""
    pixels, grid = qwen_patches(torch.as_tensor(prompt.meta["image"], dtype=torch.float32))
    tokens = int(grid.prod()) // QWEN_MERGE ** 2
    ids = [BOS, VSTART] + [IMG] * tokens + [VEND] + question_ids(prompt)
    return ids, {"pixel_values": pixels, "image_grid_thw": grid}


def image(seed, height, width):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(height, width, 3, generator=generator)


def prompts_for(kind):
    """Ragged questions; for Qwen also different image sizes (2 or 4 image tokens, non-square grids)."""
    sizes = [(28, 28)] * 3 if kind == "internvl" else [(16, 16), (8, 16), (16, 8)]
    questions = ["is it a?", "b or c? bad", "d"]
    return [Prompt(f"p{i}", q, meta={"image": image(i, *hw)}) for i, (q, hw) in enumerate(zip(questions, sizes))]


MODELS = {"internvl": (tiny_internvl, internvl_inputs), "qwen2_5_vl": (tiny_qwen25vl, qwen_inputs)}


def count_images(model):
    """A forward pre-hook on the vision tower (under any PEFT wrapper): {"calls", "images", "patches"} seen."""
    seen = {"calls": 0, "images": 0, "patches": 0}
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    tower = getattr(inner.model, "vision_tower", None) or inner.model.visual

    def hook(module, args, kwargs):
        pixels = kwargs.get("pixel_values", args[0] if args else None)
        grid = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
        seen["calls"] += 1
        seen["images"] += int(pixels.shape[0] if grid is None else grid.shape[0])
        seen["patches"] += int(pixels.shape[0])
    tower.register_forward_pre_hook(hook, with_kwargs=True)
    return seen
