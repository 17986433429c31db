"""The edit pipeline end to end with tiny models: shapes, determinism, CFG branches, samplers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sama.buckets import BucketConfig
from sama.models.encoders import TextEncoderConfig, VaeConfig, load_text_encoder, load_vae
from sama.models.pipeline import EditModelConfig, PipelineConfig, SamaPipeline
from sama.models.tiny import save_tiny_checkpoint, tiny_transformer
from sama.models.transformer import SamaModelConfig

# Buckets of about 64x96 pixels (just 64x96 and 96x64), 9 frames at most.
SMALL = BucketConfig(area=64 * 96, max_frames=9, layout="symmetric")


@pytest.fixture(scope="module")
def pipe():
    return SamaPipeline(
        tiny_transformer(seed=0),
        load_vae(VaeConfig()),
        load_text_encoder(TextEncoderConfig(max_length=16)),
        PipelineConfig(num_inference_steps=3, buckets=SMALL),
    )


def _clip(frames=10, h=50, w=80, seed=0):
    return (np.random.default_rng(seed).random((frames, h, w, 3)) * 255).astype(np.uint8)


class CountCalls:
    def __init__(self, model):
        self.model, self.calls = model, []

    def __call__(self, *args, **kwargs):
        self.calls.append(kwargs.get("source_latents") is not None)
        return self.model(*args, **kwargs)


def test_video_edit_shape_and_determinism(pipe):
    out = pipe("make the cat red", _clip(), seed=3)
    # 50x80 (ratio 1.6) -> the 64x96 bucket; 10 frames -> padded to 13 -> capped at 9
    assert out.video.shape == (1, 9, 64, 96, 3) and out.video.dtype == torch.uint8
    assert out.latents.shape == (1, 16, 3, 8, 12)
    assert out.semantic.shape == (1, 10, 32)
    again = pipe("make the cat red", _clip(), seed=3)
    assert torch.equal(out.video, again.video)
    other = pipe("make the cat red", _clip(), seed=4)
    assert not torch.equal(out.latents, other.latents)


def test_image_edit_and_text_to_video_paths(pipe):
    img = pipe(["make the cat red", "make the sky blue"], _clip(1, 90, 40)[0])
    assert img.video.shape == (2, 1, 96, 64, 3)  # portrait bucket, one frame, batch of 2 prompts
    t2v = pipe("a dog in the snow", None, num_frames=6, height=64, width=64)
    assert t2v.video.shape == (1, 9, 64, 64, 3)  # 6 frames -> 4k+1 = 9
    explicit = pipe("make the cat red", _clip(), height=64, width=64)
    assert explicit.video.shape == (1, 9, 64, 64, 3)


@pytest.mark.parametrize(
    "g_txt,g_src,branches", [(1.0, None, [True]), (5.0, None, [True, True]), (5.0, 1.5, [True, True, False])]
)
def test_guidance_branches(pipe, g_txt, g_src, branches):
    real = pipe.transformer
    pipe.transformer = counter = CountCalls(real)
    counter.patch_embedding = real.patch_embedding
    counter.dtype, counter.config = real.dtype, real.config
    try:
        pipe("make the cat red", _clip(), guidance_scale=g_txt, source_guidance_scale=g_src, num_inference_steps=2)
    finally:
        pipe.transformer = real
    # per step: (src, text) [, (src, null) [, (no source, null)]]
    assert counter.calls == branches * 2


def test_samplers_and_semantic_switch():
    base = dict(num_inference_steps=2, buckets=SMALL)
    for sampler in ("flow_euler", "euler", "unipc"):
        pipe = SamaPipeline(
            tiny_transformer(),
            load_vae(VaeConfig()),
            load_text_encoder(TextEncoderConfig(max_length=8)),
            PipelineConfig(sampler=sampler, **base),
        )
        out = pipe("make the cat red", _clip(5), seed=0)
        assert out.video.shape == (1, 5, 64, 96, 3) and torch.isfinite(out.latents).all()
    pipe = SamaPipeline(
        tiny_transformer(),
        load_vae(VaeConfig()),
        load_text_encoder(TextEncoderConfig(max_length=8)),
        PipelineConfig(num_semantic_tokens=0, **base),
    )
    out = pipe("make the cat red", _clip(5))
    assert out.semantic is None and out.video.shape == (1, 5, 64, 96, 3)
    with pytest.raises(ValueError):
        SamaPipeline(
            tiny_transformer(),
            load_vae(VaeConfig()),
            load_text_encoder(TextEncoderConfig()),
            PipelineConfig(sampler="ddim", **base),
        )("x", _clip(5))


def test_pipeline_from_configs_on_a_saved_checkpoint(tmp_path):
    root = save_tiny_checkpoint(str(tmp_path / "tiny"), plain_wan_transformer=True)
    pipe = SamaPipeline.from_configs(
        SamaModelConfig(pretrained=root, semantic_dim=32, semantic_hidden_dim=32, num_semantic_tokens=5),
        VaeConfig(pretrained=root),
        TextEncoderConfig(pretrained=root, max_length=8),
        PipelineConfig(num_inference_steps=2, buckets=SMALL),
    )
    out = pipe("make the cat red", _clip(5), output_type="tensor")
    assert out.video.shape == (1, 3, 5, 64, 96) and out.video.dtype == torch.float32
    assert out.semantic.shape == (1, 5, 32)


def test_edit_model_config_fills_every_part_from_one_checkpoint(tmp_path):
    root = save_tiny_checkpoint(str(tmp_path / "tiny"), seed=1)
    other = save_tiny_checkpoint(str(tmp_path / "other"), seed=2)
    # No SAMA sizes given: the exported checkpoint's own config (tiny: 32-wide, 10 tokens) is used.
    cfg = EditModelConfig(
        checkpoint=root, vae=VaeConfig(pretrained=other), pipeline=PipelineConfig(num_inference_steps=2, buckets=SMALL)
    )
    transformer, vae, text = cfg.resolved()
    assert (transformer.pretrained, vae.pretrained, text.pretrained) == (root, other, root)  # a set part wins
    pipe = cfg.load()
    saved = SamaPipeline.from_configs(
        SamaModelConfig(pretrained=root), VaeConfig(pretrained=other), TextEncoderConfig(pretrained=root), cfg.pipeline
    )
    for a, b in ((pipe.transformer, saved.transformer), (pipe.vae, saved.vae)):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert pipe.transformer.config.semantic_dim == 32 and pipe.transformer.config.num_semantic_tokens == 10
    assert EditModelConfig().resolved()[0].pretrained is None  # no checkpoint: the tiny random models


# (UniPC feeds the model integer timesteps, so t / 1000 is not its sigma: the fixed velocity
# head below is only exact for the Euler samplers, whose timesteps are 1000 * sigma.)
@pytest.mark.parametrize(
    "sampler,prediction",
    [
        ("flow_euler", "velocity"),
        ("euler", "velocity"),
        ("flow_euler", "sample"),
        ("euler", "sample"),
        ("unipc", "sample"),
    ],
)
def test_semantic_tokens_denoise_to_the_predicted_clean_tokens(sampler, prediction):
    """A head that always points at s0 = c (as clean tokens, or as the velocity (s - c) / sigma)
    must end sampling at c: the pipeline reads the head as the model's config says."""
    model = tiny_transformer(seed=0, semantic_prediction=prediction)
    target = torch.linspace(-1, 1, 32).expand(1, 10, 32)

    class FixedSemantic(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model
            self.config, self.patch_embedding = model.config, model.patch_embedding

        @property
        def dtype(self):
            return model.dtype

        def forward(self, latents, t, *args, semantic_tokens=None, **kwargs):
            out = self.inner(latents, t, *args, semantic_tokens=semantic_tokens, **kwargs)
            clean = target.expand_as(out.semantic)
            sigma = (t.float() / 1000).view(-1, 1, 1)
            out.semantic = clean if prediction == "sample" else (semantic_tokens.float() - clean) / sigma
            return out

    pipe = SamaPipeline(
        FixedSemantic(),
        load_vae(VaeConfig()),
        load_text_encoder(TextEncoderConfig(max_length=8)),
        PipelineConfig(sampler=sampler, num_inference_steps=4, buckets=SMALL),
    )
    out = pipe("make the cat red", _clip(5), output_type="latent")
    torch.testing.assert_close(out.semantic, target.expand_as(out.semantic), atol=1e-4, rtol=1e-4)


def test_step_cache_skips_steps_while_the_input_barely_changes(pipe):
    """Threshold 0 (the default) computes every step; a tiny positive one still does (every step
    changes the input) and gives the same video bit for bit; a huge one computes only the first and
    last steps; in between, fewer evaluations and a video close to the uncached one."""
    from dataclasses import replace

    def run(threshold: float):
        cached = SamaPipeline(pipe.transformer, pipe.vae, pipe.text_encoder, replace(pipe.config, step_cache=threshold))
        real = cached.transformer
        cached.transformer = calls = CountCalls(real)
        calls.patch_embedding, calls.dtype, calls.config = real.patch_embedding, real.dtype, real.config
        out = cached("make the cat red", _clip(), seed=5, num_inference_steps=12)
        return out, len(calls.calls)

    base, n0 = run(0.0)
    assert base.computed_steps == 12 and n0 == 24  # text CFG: two branches per step
    tiny, _ = run(1e-12)
    assert tiny.computed_steps == 12 and torch.equal(tiny.video, base.video)
    huge, n = run(1e9)
    assert huge.computed_steps == 2 and n == 4 and not torch.equal(huge.latents, base.latents)
    some, _ = run(0.2)
    assert 2 < some.computed_steps < 12
    mse = ((some.video.float() - base.video.float()) ** 2).mean().item()
    assert 10 * np.log10(255**2 / max(mse, 1e-10)) > 20  # PSNR of cached vs uncached, same seed


@pytest.mark.parametrize(
    "source,g_src,semantic",
    [("video", None, None), ("image", None, None), ("video", 1.5, None), ("video", None, 0)],
    ids=["video-edit", "image-edit", "dual-cfg", "no-semantic-tokens"],
)
def test_batched_guidance_branches_give_the_sequential_edit(pipe, source, g_src, semantic):
    """cfg_batch evaluates the (text, null) branches that share the source in one forward of twice
    the batch: the same latents and semantic tokens as one forward per branch (fp32, <= 1e-4)."""
    from dataclasses import replace

    clip = _clip() if source == "video" else _clip(1, 90, 40)[0]
    outs = []
    for batched in (False, True):
        p = SamaPipeline(
            pipe.transformer,
            pipe.vae,
            pipe.text_encoder,
            replace(pipe.config, cfg_batch=batched, num_semantic_tokens=semantic),
        )
        outs.append(p(["make the cat red", "make it snowy"], clip, seed=2, source_guidance_scale=g_src))
    seq, bat = outs
    assert (seq.latents - bat.latents).abs().max().item() <= 1e-4
    if semantic is None:
        assert (seq.semantic - bat.semantic).abs().max().item() <= 1e-4
    else:
        assert seq.semantic is None and bat.semantic is None


def test_compiled_blocks_give_the_eager_edit():
    """PipelineConfig.compile runs every transformer block through torch.compile (the eager
    backend here: Dynamo's capture without a C++ toolchain's minutes); the edit is unchanged."""
    from dataclasses import replace

    parts = (load_vae(VaeConfig()), load_text_encoder(TextEncoderConfig(max_length=16)))
    config = PipelineConfig(num_inference_steps=2, buckets=SMALL)
    eager = SamaPipeline(tiny_transformer(seed=0), *parts, config)("make it red", _clip(), seed=1)
    model = tiny_transformer(seed=0)
    compiled = SamaPipeline(model, *parts, replace(config, compile="eager"))
    assert all(b._compiled_call_impl is not None for b in model.blocks)
    out = compiled("make it red", _clip(), seed=1)
    assert torch.equal(out.latents, eager.latents)
