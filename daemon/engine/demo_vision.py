"""Builds small random-weight vision models (Qwen2-VL's or Qwen3-VL's shape, Gemma 3's or Mistral Small 3's,
in mlx-vlm's own classes, with the tokenizer and image-processor files it loads), for the tests and the
benchmarks: `mlx_vlm.load` reads them unchanged."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from daemon.engine.demo_model import _write_tokenizer, chat_template

VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
GEMMA3_TOKENS = {
    "boi_token": "<start_of_image>",
    "eoi_token": "<end_of_image>",
    "image_token": "<image_soft_token>",
}
MISTRAL3_TOKENS = ("[IMG]", "[IMG_BREAK]", "[IMG_END]")
QWEN2_VL_MAX_PIXELS = 12_845_056  # Qwen2-VL's own processor: a 1024x768 screenshot is 999 image tokens


@dataclass(frozen=True)
class VisionShape:
    """The numbers of a Qwen2-VL-family model: its language model, vision tower and image processor
    (`family` "qwen3_vl": Qwen3-VL's, whose `vision` also takes its deepstack layers)."""

    text: dict = field(
        default_factory=lambda: {
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "intermediate_size": 128,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},  # halves of 16-wide heads
        }
    )
    vision: dict = field(
        default_factory=lambda: {
            "depth": 1,
            "embed_dim": 32,
            "hidden_size": 64,
            "num_heads": 2,
            "mlp_ratio": 2,
        }
    )
    min_pixels: int = 56 * 56
    max_pixels: int = 112 * 112
    family: str = "qwen2_vl"


QWEN3_VL = VisionShape(
    text={
        "hidden_size": 64,
        "num_hidden_layers": 3,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "rope_scaling": {"rope_type": "default", "mrope_section": [2, 3, 3], "mrope_interleaved": True},
    },
    vision={
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "out_hidden_size": 64,
        "num_heads": 2,
        "num_position_embeddings": 64,
        "deepstack_visual_indexes": [0, 1],
    },
    min_pixels=64 * 64,
    max_pixels=128 * 128,
    family="qwen3_vl",
)


def build_vision_model(path: Path, shape: VisionShape = VisionShape(), seed: int = 0) -> Path:
    """Write a random-weight vision model folder at `path`."""
    from transformers import PreTrainedTokenizerFast

    path.mkdir(parents=True)
    eos, vocab = _write_tokenizer(path, 1024, vision_template(), VISION_TOKENS)
    token = PreTrainedTokenizerFast.from_pretrained(str(path)).convert_tokens_to_ids
    patch = 16 if shape.family == "qwen3_vl" else 14
    vision = {"patch_size": patch, "spatial_merge_size": 2, "temporal_patch_size": 2, "in_channels": 3}
    vision |= {"in_chans": 3} if shape.family == "qwen2_vl" else {"model_type": shape.family}
    vision |= shape.vision
    text = {
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 32768,
        "rope_theta": 1_000_000.0,
        "tie_word_embeddings": True,
        **shape.text,
        "vocab_size": vocab,
    }
    language = (
        {"text_config": {"model_type": f"{shape.family}_text", **text}}
        if shape.family == "qwen3_vl"
        else text
    )
    config = {
        "model_type": shape.family,
        "architectures": [f"{shape.family.replace('_vl', '').title()}VLForConditionalGeneration"],
        "torch_dtype": "float32",
        "tie_word_embeddings": True,
        **language,
        "eos_token_id": eos,
        "image_token_id": token("<|image_pad|>"),
        "video_token_id": token("<|video_pad|>"),
        "vision_start_token_id": token("<|vision_start|>"),
        "vision_end_token_id": token("<|vision_end|>"),
        "vision_config": vision,
    }
    processor = {
        "image_processor_type": "Qwen2VLImageProcessor",
        "min_pixels": shape.min_pixels,
        "max_pixels": shape.max_pixels,
        "patch_size": patch,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
    }
    processor_class = "Qwen3VLProcessor" if shape.family == "qwen3_vl" else "Qwen2VLProcessor"
    return _write_model(path, config, processor, {"processor_class": processor_class}, seed)


def build_gemma3_model(path: Path, seed: int = 0) -> Path:
    """Write a random-weight Gemma 3-shaped model at `path`: 2 layers of 64 (one with a sliding window), a
    SigLIP tower of one block over 56x56 pixels, 4 soft tokens an image."""
    from transformers import PreTrainedTokenizerFast

    path.mkdir(parents=True)
    template = vision_template("<start_of_image>")
    eos, vocab = _write_tokenizer(path, 1024, template, tuple(GEMMA3_TOKENS.values()))
    tokenizer_config = json.loads((path / "tokenizer_config.json").read_text())
    (path / "tokenizer_config.json").write_text(
        json.dumps({**tokenizer_config, "extra_special_tokens": GEMMA3_TOKENS})
    )
    token = PreTrainedTokenizerFast.from_pretrained(str(path)).convert_tokens_to_ids
    text = {
        "model_type": "gemma3_text",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "head_dim": 16,
        "num_key_value_heads": 2,
        "vocab_size": vocab,
        "sliding_window": 128,  # past the tests' prompts: a rotating cache they can still trim
        "sliding_window_pattern": 2,
        "mm_tokens_per_image": 4,
        "query_pre_attn_scalar": 16,
        "max_position_embeddings": 32768,
    }
    vision = {
        "model_type": "siglip_vision_model",
        "num_hidden_layers": 1,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_attention_heads": 2,
        "patch_size": 14,
        "image_size": 56,
    }
    config = {
        "model_type": "gemma3",
        "architectures": ["Gemma3ForConditionalGeneration"],
        "text_config": text,
        "vision_config": vision,
        "image_token_index": token(GEMMA3_TOKENS["image_token"]),
        "eos_token_id": eos,
        "hidden_size": 64,
        "pad_token_id": 0,
        "mm_tokens_per_image": 4,
    }
    processor = {
        "image_processor_type": "Gemma3ImageProcessor",
        "size": {"height": 56, "width": 56},
        "do_pan_and_scan": False,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }
    return _write_model(
        path, config, processor, {"processor_class": "Gemma3Processor", "image_seq_length": 4}, seed
    )


def build_mistral3_model(path: Path, seed: int = 0) -> Path:
    """Write a random-weight Mistral Small 3-shaped model at `path`: 2 Mistral layers of 64, a Pixtral tower
    of one block with 14-pixel patches (images up to 112 pixels a side, kept to their aspect ratio: rows of
    `[IMG]` tokens, one per 2x2 patches, closed by `[IMG_BREAK]` and `[IMG_END]`)."""
    from transformers import PreTrainedTokenizerFast

    path.mkdir(parents=True)
    eos, vocab = _write_tokenizer(path, 1024, vision_template("[IMG]"), MISTRAL3_TOKENS)
    token = PreTrainedTokenizerFast.from_pretrained(str(path)).convert_tokens_to_ids
    text = {
        "model_type": "mistral",
        "hidden_size": 64,
        "head_dim": 16,
        "num_hidden_layers": 2,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "rope_theta": 1_000_000_000.0,
        "max_position_embeddings": 32768,
        "vocab_size": vocab,
    }
    vision = {
        "model_type": "pixtral",
        "num_hidden_layers": 1,
        "hidden_size": 32,
        "head_dim": 16,
        "intermediate_size": 64,
        "num_attention_heads": 2,
        "image_size": 112,
        "patch_size": 14,
    }
    config = {
        "model_type": "mistral3",
        "architectures": ["Mistral3ForConditionalGeneration"],
        "text_config": text,
        "vision_config": vision,
        "image_token_index": token("[IMG]"),
        "spatial_merge_size": 2,
        "vision_feature_layer": -1,
        "multimodal_projector_bias": False,
        "eos_token_id": eos,
    }
    processor = {
        "image_processor_type": "PixtralImageProcessor",
        "size": {"longest_edge": 112},
        "patch_size": {"height": 14, "width": 14},
    }
    return _write_model(path, config, processor, {"processor_class": "PixtralProcessor"}, seed)


def _write_model(path: Path, config: dict, processor: dict, processor_config: dict, seed: int) -> Path:
    """The model's config and processor files, and random weights in mlx-vlm's classes for `config`."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_vlm.utils import get_model_and_args, update_module_configs

    (path / "config.json").write_text(json.dumps(config, indent=2))
    (path / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))
    (path / "processor_config.json").write_text(json.dumps(processor_config))
    module = get_model_and_args(dict(config))[0]
    given = dict(config)  # as mlx-vlm's loader reads it: `from_dict` fills in its text_config
    model_config = update_module_configs(
        module.ModelConfig.from_dict(given), module, given, ["text", "vision"]
    )
    mx.random.seed(seed)
    model = module.Model(model_config)
    mx.save_safetensors(str(path / "model.safetensors"), dict(tree_flatten(model.parameters())))
    return path


def vision_template(image: str = "<|vision_start|><|image_pad|><|vision_end|>") -> str:
    """mlxd's chat template, writing an image part as `image` (by default Qwen2-VL's markup)."""
    text_only = "{%- if part.type == 'text' -%}{{ part.text }}{%- endif -%}"
    with_images = (
        "{%- if part.type == 'text' -%}{{ part.text }}{%- elif part.type == 'image' -%}"
        f"{image}{{%- endif -%}}"
    )
    template = chat_template()
    if text_only not in template:
        raise RuntimeError("the chat template's text_of macro changed: teach vision_template the new one")
    return template.replace(text_only, with_images)
