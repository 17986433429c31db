"""Encoders on tiny models: Wan VAE wrapper, SigLIP anchor tokens, UMT5 text, tiny checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sama.models.encoders import (
    SemanticConfig,
    SemanticTokenizer,
    TextEncoderConfig,
    VaeConfig,
    anchor_indices,
    load_semantic_tokenizer,
    load_text_encoder,
    load_vae,
    tensor_to_video,
    video_to_tensor,
)
from sama.models.tiny import save_tiny_checkpoint, tiny_siglip


def test_video_tensor_round_trip():
    v = (np.random.default_rng(0).random((5, 8, 12, 3)) * 255).astype(np.uint8)
    x = video_to_tensor(v)
    assert x.shape == (3, 5, 8, 12) and x.min() >= -1 and x.max() <= 1
    assert np.array_equal(tensor_to_video(x).numpy(), v)


def test_anchor_indices_uniform():
    assert anchor_indices(9, 1) == [4]
    assert anchor_indices(9, 3) == [1, 4, 7]
    assert anchor_indices(81, 4) == [10, 30, 50, 70]
    assert anchor_indices(1, 2) == [0, 0]  # an image: every anchor is the image


def test_vae_shapes_and_normalisation():
    vae = load_vae(VaeConfig())
    x = torch.rand(2, 3, 9, 64, 48) * 2 - 1
    z = vae.encode(x)
    assert z.shape == (2, 16, 3, 8, 6) == (2, *vae.latent_shape(9, 64, 48))
    raw = vae.vae.encode(x).latent_dist.mode()
    torch.testing.assert_close(z, (raw - vae.latents_mean) / vae.latents_std)
    y = vae.decode(z)
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1
    img = vae.encode(x[:, :, :1])  # an image is a 1-frame video
    assert img.shape == (2, 16, 1, 8, 6)
    with pytest.raises(ValueError, match="4k\\+1"):
        vae.latent_shape(8, 64, 64)
    assert load_vae(VaeConfig(tiling=True)).vae.use_tiling


def test_semantic_tokens_are_pooled_patch_features():
    tok = load_semantic_tokenizer(SemanticConfig(num_anchor_frames=2, num_local_tokens=4))
    assert tok.num_tokens == 10
    video = torch.rand(2, 3, 9, 40, 56) * 2 - 1
    out = tok(video)
    assert out.shape == (2, 10, 32)
    # hand computation for the first anchor frame of sample 0
    frame = video[0:1, :, anchor_indices(9, 2)[0]]
    frame = F.interpolate(frame, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
    ref = tok.model(pixel_values=frame)
    patches = ref.last_hidden_state[0]  # (16, D): a 4x4 grid
    grid = patches.view(4, 4, -1)
    torch.testing.assert_close(out[0, 0], ref.pooler_output[0])  # global token first
    torch.testing.assert_close(out[0, 1], grid[:2, :2].reshape(-1, 32).mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[0, 4], grid[2:, 2:].reshape(-1, 32).mean(0), atol=1e-5, rtol=1e-5)
    # global token as the mean of the patch features, on an image (1-frame video)
    image = frame.unsqueeze(2)  # already SigLIP-sized: the resize is the identity
    mean_tok = SemanticTokenizer(tok.model, 1, 4, global_token="mean")(image)
    assert mean_tok.shape == (1, 5, 32)
    torch.testing.assert_close(mean_tok[0, 0], patches.mean(0), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError):
        SemanticTokenizer(tiny_siglip(), 1, 5)


def test_text_encoder_pads_with_zeros_and_is_deterministic():
    enc = load_text_encoder(TextEncoderConfig(max_length=12))
    emb, lengths = enc.encode(["make the cat red", "turn the sky into a golden anime painting"])
    assert emb.shape == (2, 12, 32)
    assert lengths.tolist() == [5, 9]  # words + </s>
    assert torch.all(emb[0, 5:] == 0) and torch.all(emb[0, :5].abs().sum(-1) > 0)
    again = load_text_encoder(TextEncoderConfig(max_length=12))(["make the cat red"])
    torch.testing.assert_close(again[0], emb[0])


def test_tiny_checkpoint_loads_like_the_real_layout(tmp_path):
    root = save_tiny_checkpoint(str(tmp_path / "ckpt"), seed=0)
    x = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    vae_a, vae_b = load_vae(VaeConfig()), load_vae(VaeConfig(pretrained=root))
    torch.testing.assert_close(vae_a.encode(x), vae_b.encode(x))
    text_a = load_text_encoder(TextEncoderConfig(max_length=8))
    text_b = load_text_encoder(TextEncoderConfig(pretrained=root, max_length=8))
    assert text_b.tokenizer("Make the cat red").input_ids == text_a.tokenizer("Make the cat red").input_ids
    torch.testing.assert_close(text_a(["a red cat"]), text_b(["a red cat"]))
    sem_a = load_semantic_tokenizer(SemanticConfig(num_local_tokens=4))
    sem_b = load_semantic_tokenizer(SemanticConfig(pretrained=root, subfolder="image_encoder", num_local_tokens=4))
    torch.testing.assert_close(sem_a(x), sem_b(x))
