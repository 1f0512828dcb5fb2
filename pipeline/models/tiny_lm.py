"""A tiny chat LM and a tiny image-text model built offline, for tests and the demo.

    lm = build_tiny_lm(tmp / "tiny-lm")      # LlamaForCausalLM, byte-level tokenizer, chat template
    vlm = build_tiny_vlm(tmp / "tiny-vlm")   # LlavaForConditionalGeneration, CLIP tower, LlavaProcessor

Both are real transformers models (random weights, seeded, so every build is identical) saved with
`save_pretrained`, so they load through `AutoModelForCausalLM` / `AutoModelForImageTextToText`,
`AutoTokenizer` / `AutoProcessor` exactly as a downloaded checkpoint does. Nothing touches the
network, and each build takes well under a second.

The tokenizer is byte-level BPE with no merges (one token per UTF-8 byte), so any text, in any
script, round-trips; with Llama 3's special tokens and a Llama-3-like chat template (system, user
and assistant roles, `add_generation_prompt`, image and video items). The template starts with
`<|begin_of_text|>` itself, as Llama 3's does, and the tokenizer also adds it to raw text.

The image-text model is plain LLaVA (`LlavaForConditionalGeneration`): a CLIP vision tower on
32-pixel images in 8-pixel patches (16 tokens an image) and a Llama text model, with the real
`LlavaProcessor` and CLIP's image preprocessing. Video frames go to it as one image each. It is
LLaVA rather than LLaVA-NeXT-Video or LLaVA-OneVision because transformers 5's video processors
need torchvision, which this project does not install; LLaVA's image processor has a PIL backend.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.models.tiny import build_once

BOS, EOS, EOT, PAD = "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|pad|>"
HEADER_START, HEADER_END = "<|start_header_id|>", "<|end_header_id|>"
IMAGE, VIDEO = "<image>", "<video>"

# Llama 3's layout, trimmed: the message's role in a header, its content, <|eot_id|>. String content
# or a list of items (text, image, video) as processors pass it.
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for item in message['content'] %}"
    "{%- if item['type'] == 'image' %}{{- '<image>' }}"
    "{%- elif item['type'] == 'video' %}{{- '<video>' }}"
    "{%- elif item['type'] == 'text' %}{{- item['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
# Written last: a folder without it (a build cut short, an empty folder) is built again.
_MARKER = "tiny_lm_complete"
_WIDTH, _LAYERS, _HEADS, _CONTEXT = 32, 2, 2, 1024
_IMAGE_SIZE, _PATCH = 32, 8


def _tokenizer(media: bool):
    """A fast tokenizer: the 256 byte symbols, then the special tokens (media ones if `media`)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {symbol: i for i, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    specials = [BOS, EOS, EOT, PAD, HEADER_START, HEADER_END] + ([IMAGE, VIDEO] if media else [])
    backend.add_special_tokens(specials)
    bos_id = backend.token_to_id(BOS)
    # Raw text gets <|begin_of_text|> in front, as Llama 3's tokenizer does.
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)])
    extra = {"extra_special_tokens": {"image_token": IMAGE, "video_token": VIDEO}} if media else {}
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=BOS, eos_token=EOT, pad_token=PAD,
                                   chat_template=CHAT_TEMPLATE, model_max_length=_CONTEXT, **extra)


def _text_config(tokenizer) -> dict:
    return dict(vocab_size=len(tokenizer), hidden_size=_WIDTH, intermediate_size=2 * _WIDTH,
                num_hidden_layers=_LAYERS, num_attention_heads=_HEADS, num_key_value_heads=_HEADS,
                max_position_embeddings=_CONTEXT, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)


def _generation_config(tokenizer):
    from transformers import GenerationConfig

    # Both ends of a turn stop generation, as in Llama 3 Instruct.
    eos = [tokenizer.convert_tokens_to_ids(EOT), tokenizer.convert_tokens_to_ids(EOS)]
    return GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=eos,
                            pad_token_id=tokenizer.pad_token_id)


def build_tiny_lm(folder: str | Path, seed: int = 0) -> str:
    """Build the tiny chat LM into `folder` (created if needed) and return it as a string; a folder
    that already holds a complete build is returned as it is. `seed` draws the weights."""
    return build_once(folder, _MARKER, lambda f: _write_tiny_lm(f, seed))


def _write_tiny_lm(folder: Path, seed: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _tokenizer(media=False)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**_text_config(tokenizer)))
    model.generation_config = _generation_config(tokenizer)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def build_tiny_vlm(folder: str | Path, seed: int = 0) -> str:
    """Build the tiny LLaVA into `folder` (created if needed) and return it as a string; a folder
    that already holds a complete build is returned as it is. `seed` draws the weights."""
    return build_once(folder, _MARKER, lambda f: _write_tiny_vlm(f, seed))


def _write_tiny_vlm(folder: Path, seed: int) -> None:
    import torch
    from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    tokenizer = _tokenizer(media=True)
    vision = dict(model_type="clip_vision_model", hidden_size=_WIDTH, intermediate_size=2 * _WIDTH,
                  num_hidden_layers=_LAYERS, num_attention_heads=_HEADS, image_size=_IMAGE_SIZE, patch_size=_PATCH)
    tokens_per_image = (_IMAGE_SIZE // _PATCH) ** 2
    config = LlavaConfig(
        vision_config=vision,
        text_config=dict(_text_config(tokenizer), model_type="llama"),
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE),
        # LLaVA 1.5's choices: the penultimate layer's patch features, the CLS token dropped.
        vision_feature_layer=-2, vision_feature_select_strategy="default", image_seq_length=tokens_per_image,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config = _generation_config(tokenizer)
    model.save_pretrained(folder)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": _IMAGE_SIZE}, crop_size={"height": _IMAGE_SIZE, "width": _IMAGE_SIZE},
        image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD)
    # num_additional_image_tokens=1: CLIP's CLS, which the "default" strategy then drops.
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE,
                               patch_size=_PATCH, vision_feature_select_strategy="default",
                               num_additional_image_tokens=1, image_token=IMAGE)
    processor.save_pretrained(folder)
