"""``sama demo``: every job that exists so far, end to end, on generated sample data."""

from __future__ import annotations

import os
import time

from sama.testing.lookalikes import KOALA_COLUMNS, MAKERS, make_lookalikes

from . import launcher, world

HERE = os.path.dirname(os.path.abspath(__file__))


def job_yaml(name: str) -> str:
    return os.path.join(HERE, f"{name}.yaml")


def sample_data(workdir: str, n: int = 3) -> dict[str, str]:
    """Look-alikes of every dataset under ``workdir/data`` (made once, reused after)."""
    data = os.path.join(workdir, "data")
    marker = os.path.join(data, ".complete")
    if not os.path.exists(marker):
        print(f"[demo] generating sample data for every dataset in {data}")
        make_lookalikes(data, n=n, odd=True)
        open(marker, "w").close()
    return {name: os.path.join(data, folder) for name, (folder, _) in MAKERS.items()}


def fetch_step(workdir: str, outputs: str, n: int = 3) -> dict[str, str]:
    """Koala-36M rows and Pico-Banana edits that only reference their media, fetched from a local web
    server standing in for YouTube and Flickr (the demo has no internet): spans cut to clips, sources
    saved where ingest reads them, a removed video and a missing image recorded as failed."""
    import csv
    import json

    from sama.pipelines.fetch.testserver import MediaServer
    from sama.testing.media import image_bytes, write_image, write_video

    root = os.path.join(workdir, "data", "fetch")
    koala, pico, out = os.path.join(root, "koala36m"), os.path.join(root, "Pico-Banana-400K"), f"{outputs}/fetch"
    with MediaServer() as server:
        rows = []
        for i in range(n):
            video = write_video(os.path.join(root, "web", f"demo{i:02d}.mp4"), frames=40, fps=8, seed=200 + i)
            server.add(f"/yt/demo{i:02d}.mp4", open(video, "rb").read())
            rows.append(
                [
                    f"demo{i:02d}",
                    f"https://www.youtube.com/watch?v=demo{i:02d}",
                    "[0.5, 2.5]",
                    f"a square moving, take {i}",
                    0.9,
                    5,
                    3,
                    0.8,
                ]
            )
        rows.append(
            ["removed01", "https://www.youtube.com/watch?v=removed01", "[0.0, 2.0]", "a removed video", 1, 1, 1, 1]
        )
        os.makedirs(koala, exist_ok=True)
        with open(os.path.join(koala, "Koala_36M_1.csv"), "w", newline="") as f:
            csv.writer(f).writerows([KOALA_COLUMNS, *rows])
        recs = []
        for i in range(n):
            server.add(f"/flickr/src{i}.jpg", image_bytes(64, 48, seed=300 + i))
            write_image(os.path.join(pico, "images", f"e{i}.png"), 64, 48, seed=320 + i)
            recs.append(
                {
                    "open_image_input_url": server.url(f"/flickr/src{i}.jpg"),
                    "text": f"make it snowy {i}",
                    "output_image": f"images/e{i}.png",
                    "edit_type": "weather",
                }
            )
        write_image(os.path.join(pico, "images", "gone.png"), 64, 48, seed=9)
        recs.append(
            {"open_image_input_url": server.url("/flickr/gone.jpg"), "text": "x", "output_image": "images/gone.png"}
        )
        with open(os.path.join(pico, "sft.jsonl"), "w") as f:
            f.write("".join(json.dumps(r) + "\n" for r in recs))
        launcher.run(
            job_yaml("fetch"),
            [
                f"output={out}",
                f"fetch.koala.root={koala}",
                f"fetch.pico.root={pico}",
                f"fetch.koala.url_template={server.url('/yt/{video_id}.mp4')}",
                "fetch.hosts.default.rate=0",
            ],
        )
    return {"fetch table": f"{out}/fetch", "fetched clips": f"{koala}/clips", "fetched sources": f"{pico}/sources"}


def serve_step(outputs: str, source: str, instruction: str, model: list[str] = ()) -> str:
    """Deploy jobs/serve.yaml on the demo's Ray (``model``: overrides of ``serve.model``), edit
    ``source`` through the HTTP API, shut down."""
    import socket

    from ray import serve

    from sama.serve import job as serve_job
    from sama.serve.client import TOKEN_ENV, EditClient, EditOptions

    with socket.socket() as s:  # a free port, so a demo never collides with a running service
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    overrides = [
        f"output={outputs}/serve",
        f"http.port={port}",
        "detach=true",
        "serve.editor.num_cpus=0.5",
        "serve.ingress.num_cpus=0.1",
        "serve.editor.autoscaling.max_replicas=1",
        f"serve.results={os.path.abspath(outputs)}/serve/results",
        *model,
    ]
    cfg, _ = launcher.resolve(job_yaml("serve"), overrides)
    out = os.path.join(outputs, "serve", "edited.mp4")
    started = launcher.connect(cfg.ray)
    try:
        address = serve_job.deploy(cfg)
        with EditClient(address, os.environ[TOKEN_ENV]) as client:
            job = client.edit(source, instruction, out, EditOptions())
        print(
            f"[demo] {instruction!r}: edited {job['video']['frames']} frames in {job['video']['seconds']}s "
            f"on replica {job['replica']}"
        )
    finally:
        serve.shutdown()
        if started:
            import ray

            ray.shutdown()
    return out


def eval_set(workdir: str, n: int = 3) -> str:
    """A small user-format benchmark (CSV) of generated clips with known motion."""
    import csv

    from sama.testing.media import write_video

    root = os.path.join(workdir, "data", "eval")
    manifest = os.path.join(root, "manifest.csv")
    if not os.path.exists(manifest):
        edits = [
            ("make the square red", "color"),
            ("turn it into a watercolor painting", "style"),
            ("remove the square", "remove"),
            ("make the background snowy", "background"),
        ]
        rows = []
        for i in range(n):
            write_video(os.path.join(root, f"clip{i}.mp4"), frames=9, width=64, height=64, seed=100 + i)
            instruction, category = edits[i % len(edits)]
            rows.append([f"clip{i}.mp4", instruction, category, f"demo-{i}"])
        with open(manifest + ".tmp", "w", newline="") as f:
            csv.writer(f).writerows([["source", "instruction", "category", "id"], *rows])
        os.replace(manifest + ".tmp", manifest)
    return manifest


def run_eval_demo(workdir: str, n: int = 3, extra: list[str] | None = None) -> dict[str, str]:
    """Evaluate the tiny model on generated clips, metrics only (no judge key needed)."""
    out = os.path.join(workdir, "outputs", "evaluate")
    launcher.run(
        job_yaml("eval"),
        [f"output={out}", f"evaluate.manifest={eval_set(workdir, n)}", "evaluate.judge.backend=none", *(extra or [])],
    )
    return {
        "eval results": f"{out}/results",
        "eval table": f"{out}/by_category.parquet",
        "eval report": f"{out}/report/index.html",
    }


class _Clock:
    """Seconds per demo step, printed at the end (where the demo's minutes go)."""

    def __init__(self) -> None:
        self.start = self.last = time.time()
        self.seconds: dict[str, int] = {}

    def lap(self, step: str) -> None:
        now = time.time()
        self.seconds[step] = round(now - self.last)
        self.last = now


def run_demo(workdir: str = "sama-demo", n: int = 3) -> dict[str, str]:
    with launcher.session():  # one Ray for every step
        return _run_demo(workdir, n)


def _run_demo(workdir: str, n: int) -> dict[str, str]:
    clock = _Clock()
    workdir = os.path.abspath(workdir)  # every job's workers see the same paths, wherever they run
    roots = sample_data(workdir, n)
    outputs = os.path.join(workdir, "outputs")
    results: dict[str, str] = {}

    print(
        "[demo] 1/9 fetch: Koala-36M spans and Pico-Banana sources from a local web server (YouTube/Flickr "
        "stand-in) -> clips + fetch table"
    )
    results.update(fetch_step(workdir, outputs))
    clock.lap("fetch")

    print("\n[demo] 2/9 ingest: every dataset -> manifest + rejects")
    overrides = [f"output={outputs}/ingest"] + [f"ingest.datasets.{k}.root={v}" for k, v in roots.items()]
    launcher.run(job_yaml("ingest"), overrides)
    results["manifest"] = f"{outputs}/ingest/manifest"
    results["rejects"] = f"{outputs}/ingest/rejects"
    results["ingest summary"] = f"{outputs}/ingest/summary.json"
    clock.lap("ingest")

    # The embedded default needs no key: cheap checks only (verdicts say judge_model "none:cheap-checks-only").
    # The sample clips are tiny (64x48), hence the lower resolution floor.
    print("\n[demo] 3/9 filter: cheap media checks (no VLM judge) -> verdicts + filtered manifest + report")
    launcher.run(
        job_yaml("filter"),
        [
            f"output={outputs}/filter",
            f"filter.input={outputs}/ingest/manifest",
            "filter.judge.backend=none",
            "filter.checks.min_short_side=32",
        ],
    )
    results["verdicts"] = f"{outputs}/filter/verdicts"
    results["filtered manifest"] = f"{outputs}/filter/manifest"
    results["filter report"] = f"{outputs}/filter/report/index.html"
    clock.lap("filter")

    print("\n[demo] 4/9 the synthetic editing world: clips, image and video edits in dataset layouts, a held-out")
    print("        benchmark with targets; its VAE (trained once, cached); ingest + filter (cheap checks)")
    w = world.world_data(workdir)
    ckpt = world.world_model(workdir)
    clock.lap("world + VAE")
    manifest = world.curate(w, outputs)
    clock.lap("world ingest + filter")
    results.update({"world": w.root, "world benchmark": w.benchmark, "world checkpoint": ckpt})

    print("\n[demo] 5/9 precompute: world VAE latents, SigLIP anchor tokens, text embeddings")
    latents = world.precompute(manifest, ckpt, outputs)
    results["latents"] = latents
    clock.lap("precompute")
    results.update(world.train(latents, ckpt, outputs))
    clock.lap("train stage 0 + 1")
    export = f"{outputs}/train_stage1/export"

    print("\n[demo] 8/9 serve: start the edit service with the trained model, edit a held-out clip over HTTP")
    item = next(i for i, it in w.items.items() if it["kind"] == "recolour")
    source = os.path.join(os.path.dirname(w.benchmark), "source", f"{item}.mp4")
    instruction = w.items[item]["instruction"]
    results["edited video"] = serve_step(
        outputs, source, instruction, world.model_overrides("serve.model", ckpt, export)
    )
    target = os.path.join(os.path.dirname(w.benchmark), "target", f"{item}.mp4")
    results["edit sheet"] = world.edit_sheet(
        source, results["edited video"], target, instruction, f"{outputs}/serve/edit_sheet.jpg", ckpt
    )
    clock.lap("serve")

    print("\n[demo] 9/9 evaluate on the held-out benchmark: identity, untrained, stage 0, stage 1 -> learning table")
    world.evaluate(w, ckpt, world.exports(outputs), outputs)
    clock.lap("evaluate")
    results["learning table"] = f"{outputs}/learning.json"
    results["eval report"] = f"{outputs}/evaluate/stage1/report/index.html"
    results["model card"] = f"{export}/README.md"  # data, licenses, filter, evaluation; `sama lineage` on it

    print(f"\n[demo] done in {time.time() - clock.start:.0f}s; seconds per step:")
    print("  " + ", ".join(f"{step} {s}" for step, s in clock.seconds.items()))
    print("[demo] outputs:")
    width = max(map(len, results))
    for k, v in results.items():
        print(f"  {k:<{width}}  {os.path.abspath(v)}")
    return results
