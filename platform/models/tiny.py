"""Tiny random-initialised stand-ins for every SAMA model, for CPU tests and the demo.

Same classes and code paths as the real models (Wan transformer / VAE, SigLIP, UMT5 and a
Hugging Face tokenizer), only small: the VAE keeps Wan's 8x spatial / 4x temporal
compression and 16 latent channels so bucket and frame arithmetic is the real one.
Every builder is seeded, so two processes (precompute, train, serve) that build the same
tiny model get the same weights; ``save_tiny_checkpoint`` writes them in the Hugging Face /
diffusers folder layout so the loading paths can be exercised too.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

# Shapes shared by the tiny models (they must agree with each other).
TINY_LATENT_CHANNELS = 16
TINY_TEXT_DIM = 32
TINY_SIGLIP_DIM = 32
TINY_SIGLIP_IMAGE = 32  # 4x4 grid of 8-pixel patches
TINY_LOCAL_TOKENS = 4  # 2x2 pooled grid (+1 global) per anchor frame
TINY_NUM_SEMANTIC = 2 * (TINY_LOCAL_TOKENS + 1)  # room for 2 anchor frames

# Subfolders of a pipeline checkpoint (diffusers' Wan layout + SigLIP beside it).
SUBFOLDERS = {
    "transformer": "transformer",
    "vae": "vae",
    "text_encoder": "text_encoder",
    "tokenizer": "tokenizer",
    "image_encoder": "image_encoder",
}

_WORDS = (
    "a an the of and in on to with into from at by for is are make turn change replace remove add "
    "red green blue yellow black white orange purple pink gray brown golden "
    "cat dog man woman person car tree sky sea sun moon house street city forest snow rain "
    "video edit style cube inpainting speed perturbation tube shuffle restore reconstruct "
    "anime painting cartoon watercolor sketch oil background foreground color hat shirt "
    "0 1 2 3 4 5 6 7 8 9 [ ] . , : ! ? "
    # the synthetic editing world (sama.testing.world): its shapes, colours, places and verbs
    "it paint colour delete take away put place backdrop convert circle square triangle navy beige teal "
    "top left right bottom moving over"
).split()


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator for the block without disturbing the caller's RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def tiny_transformer_config(**overrides) -> dict:
    cfg = dict(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=16,  # rope split: t 8, h 4, w 4
        in_channels=TINY_LATENT_CHANNELS,
        out_channels=TINY_LATENT_CHANNELS,
        text_dim=TINY_TEXT_DIM,
        freq_dim=32,
        ffn_dim=64,
        num_layers=2,
        rope_max_seq_len=64,
        semantic_dim=TINY_SIGLIP_DIM,
        semantic_hidden_dim=32,
        num_semantic_tokens=TINY_NUM_SEMANTIC,
    )
    cfg.update(overrides)
    return cfg


def tiny_transformer(seed: int = 0, **overrides):
    from sama.models.transformer import SamaTransformer3DModel

    with seeded(seed):
        return SamaTransformer3DModel(**tiny_transformer_config(**overrides)).eval()


def tiny_wan_transformer(seed: int = 0, **overrides):
    """A plain diffusers WanTransformer3DModel with the tiny shapes (no SAMA parameters)."""
    from diffusers import WanTransformer3DModel

    cfg = {
        k: v
        for k, v in tiny_transformer_config(**overrides).items()
        if k not in ("semantic_dim", "semantic_hidden_dim", "num_semantic_tokens")
    }
    with seeded(seed):
        return WanTransformer3DModel(**cfg).eval()


def tiny_vae(seed: int = 0):
    from diffusers import AutoencoderKLWan

    with seeded(seed):
        return AutoencoderKLWan(
            base_dim=4,
            z_dim=TINY_LATENT_CHANNELS,
            dim_mult=[1, 1, 1, 1],  # three 2x downsamples: 8x spatial, like Wan
            num_res_blocks=1,
            temperal_downsample=[False, True, True],  # 4x temporal, like Wan
        ).eval()


def tiny_siglip(seed: int = 0):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    cfg = SiglipVisionConfig(
        hidden_size=TINY_SIGLIP_DIM,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=TINY_SIGLIP_IMAGE,
        patch_size=8,
    )
    with seeded(seed):
        return SiglipVisionModel(cfg).eval()


def tiny_tokenizer():
    """A word-level Hugging Face fast tokenizer built offline (T5 conventions: pad 0, eos 1)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for word in _WORDS:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()])
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=512
    )


def tiny_text_encoder(seed: int = 0, vocab_size: int | None = None):
    from transformers import UMT5Config, UMT5EncoderModel

    cfg = UMT5Config(
        vocab_size=vocab_size or len(tiny_tokenizer()),
        d_model=TINY_TEXT_DIM,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        dropout_rate=0.0,
    )
    with seeded(seed):
        return UMT5EncoderModel(cfg).eval()


def save_tiny_checkpoint(path: str, seed: int = 0, plain_wan_transformer: bool = False) -> str:
    """Write every tiny model under ``path`` in the pipeline layout (see ``SUBFOLDERS``).

    ``plain_wan_transformer``: save a diffusers ``WanTransformer3DModel`` (as a Wan2.1
    release ships) instead of a SAMA one, to exercise loading with new parameters.
    """
    transformer = tiny_wan_transformer(seed) if plain_wan_transformer else tiny_transformer(seed)
    transformer.save_pretrained(os.path.join(path, SUBFOLDERS["transformer"]))
    tiny_vae(seed).save_pretrained(os.path.join(path, SUBFOLDERS["vae"]))
    tiny_text_encoder(seed).save_pretrained(os.path.join(path, SUBFOLDERS["text_encoder"]))
    tiny_tokenizer().save_pretrained(os.path.join(path, SUBFOLDERS["tokenizer"]))
    tiny_siglip(seed).save_pretrained(os.path.join(path, SUBFOLDERS["image_encoder"]))
    return path
