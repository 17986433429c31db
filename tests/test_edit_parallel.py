"""Editors over several processes (gloo on CPU, through Ray actors as serving and evaluation run
them): sequence-parallel, CFG-parallel and both give the one-process edit within 1e-4 on the
latents, for video and image edits, with and without semantic tokens, text and dual CFG; a
cancel heard by rank 0 stops every rank at the same step and the group edits on."""

from __future__ import annotations

import sys
import time
from dataclasses import replace

import numpy as np
import pytest

from sama.buckets import BucketConfig
from sama.models.edit_parallel import layout
from sama.models.encoders import TextEncoderConfig
from sama.models.pipeline import EditModelConfig, PipelineConfig

SMALL = BucketConfig(area=64 * 96, max_frames=9, layout="symmetric")
MODEL = EditModelConfig(
    text=TextEncoderConfig(max_length=16), pipeline=PipelineConfig(num_inference_steps=3, buckets=SMALL)
)
CLIP = (np.random.default_rng(0).random((9, 48, 80, 3)) * 255).astype(np.uint8)
CASES = {  # name: (model config, call kwargs)
    "video": (MODEL, dict(prompt="make it red", source=CLIP)),
    "image": (MODEL, dict(prompt="make it red", source=CLIP[0])),
    "video-dual-cfg": (MODEL, dict(prompt="make it red", source=CLIP, source_guidance_scale=1.5)),
    "video-no-semantic": (replace(MODEL, pipeline=replace(MODEL.pipeline, num_semantic_tokens=0)), {}),
    "video-cfg-batch": (replace(MODEL, pipeline=replace(MODEL.pipeline, cfg_batch=True)), {}),
}


class Owner:
    """What a Serve replica or an evaluation actor is: the rank-0 process of an editor group."""

    def __init__(self, model: EditModelConfig, processes: int, cfg_parallel: bool):
        from sama.models.edit_group import EditGroup, GroupConfig

        self.group = EditGroup(model, "cpu", GroupConfig(processes, cfg_parallel, num_cpus=0.25, failed_grace_s=3))

    def layout(self) -> dict:
        return self.group.layout

    def edit(self, config: PipelineConfig, kwargs: dict, stop_at: int | None = None) -> dict:
        from sama.models.pipeline import EditStopped

        self.group.configure(config)
        calls = []

        def stop() -> bool:
            calls.append(1)
            if stop_at == -1:  # rank 0 fails alone (the helpers go on into the step's collectives)
                raise MemoryError("rank 0 only")
            return stop_at is not None and len(calls) >= stop_at

        t0 = time.time()
        try:
            out = self.group(**kwargs, stop=stop, output_type="latent")
        except EditStopped as e:
            return {"stopped": str(e), "asked": len(calls)}
        sem = out.semantic.numpy() if out.semantic is not None else None
        return {
            "latents": out.latents.numpy(),
            "semantic": sem,
            "forwards": self.group.forwards_per_step(),
            "span": (t0, time.time()),
        }

    def kill_helper(self) -> None:
        import ray

        ray.kill(self.group.helpers[0])

    def healthy(self) -> tuple[bool, float]:
        try:
            self.group.check_health(timeout_s=5)
        except Exception:  # noqa: BLE001 - the point: a lost helper shows
            return False, time.time()
        return True, time.time()


def test_layout_puts_the_branches_on_two_halves_when_the_count_is_even():
    assert [layout(n, True) for n in (1, 2, 3, 4, 8)] == [1, 2, 1, 2, 2]
    assert [layout(n, False) for n in (2, 4)] == [1, 1]


@pytest.mark.slow
def test_parallel_edits_match_the_one_process_edit(ray_cluster):
    import ray
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import a test module
    # Two processes splitting the sequence, two splitting the branches, and both at once.
    layouts = {"sp2": (2, False), "cfg2": (2, True), "cfg2xsp2": (4, True)}
    owner = ray.remote(Owner).options(num_cpus=0.25, max_concurrency=2)  # a health ping beside an edit
    # The model config differs per case only in pipeline settings: one group per layout serves them all.
    owners = {name: owner.remote(MODEL, n, cfg) for name, (n, cfg) in layouts.items()}
    assert ray.get(owners["cfg2xsp2"].layout.remote()) == {"processes": 4, "cfg_groups": 2, "sequence_parallel": 2}

    for case, (model, kwargs) in CASES.items():
        kwargs = {**CASES["video"][1], **kwargs}
        ref = model.load("cpu")(**kwargs, output_type="latent")
        got = ray.get([o.edit.remote(model.pipeline, kwargs) for o in owners.values()])
        for name, out in zip(owners, got):
            diff = np.abs(out["latents"] - ref.latents.numpy()).max()
            assert diff <= 1e-4, (case, name, diff)
            if ref.semantic is None:
                assert out["semantic"] is None, (case, name)
            else:
                assert np.abs(out["semantic"] - ref.semantic.numpy()).max() <= 1e-4, (case, name)

    assert ray.get(owners["sp2"].layout.remote()) == {"processes": 2, "cfg_groups": 1, "sequence_parallel": 2}
    # A CFG-parallel rank runs only its share of the branches (2 of text CFG: one each).
    assert ray.get(owners["cfg2xsp2"].edit.remote(MODEL.pipeline, CASES["video"][1]))["forwards"] == 1
    assert ray.get(owners["sp2"].edit.remote(MODEL.pipeline, CASES["video"][1]))["forwards"] == 2

    # Only rank 0 is asked to stop; every rank stops before the same step, and the group edits on.
    stopped = ray.get(owners["cfg2xsp2"].edit.remote(MODEL.pipeline, CASES["video"][1], stop_at=2))
    assert stopped == {"stopped": "stopped before step 2 of 3", "asked": 2}
    again = ray.get(owners["cfg2xsp2"].edit.remote(MODEL.pipeline, CASES["video"][1]))
    assert again["latents"].shape == ref.latents.shape

    # Helpers answer the health check while an edit runs (Serve pings replicas every 10 s; a
    # 14B edit takes a minute), and a lost helper fails it (Serve then replaces the replica).
    o = owners["cfg2xsp2"]
    long = o.edit.remote(MODEL.pipeline, {**CASES["video"][1], "num_inference_steps": 20})
    pings = []
    while not ray.wait([long], timeout=0.2)[0]:
        pings.append(ray.get(o.healthy.remote()))
    start, end = ray.get(long)["span"]
    assert all(ok for ok, _ in pings) and any(start < at < end for _, at in pings), (start, end, pings)
    ray.get(o.kill_helper.remote())
    assert ray.get(o.healthy.remote())[0] is False
    # Rank 0 failing alone (say, out of memory) does not hold the replica for the collective
    # timeout: the error comes back at once, the group is dropped and says why.
    o = owners["sp2"]
    with pytest.raises(MemoryError, match="rank 0 only"):
        ray.get(o.edit.remote(MODEL.pipeline, CASES["video"][1], stop_at=-1), timeout=120)
    assert ray.get(o.healthy.remote())[0] is False
    for o in owners.values():
        ray.kill(o)
