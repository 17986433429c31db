"""The precompute job: a (filtered) manifest -> training-ready latents on storage.

Ray Data pipeline, streaming, each stage with its own resources::

    manifest rows (not done yet, sorted by bucket)
      -> decode   CPU tasks:   frames at ``fps`` -> 4k+1 -> bucket resize/crop -> pretext
      -> encode   actor pool:  Wan VAE (source, target), SigLIP anchors, UMT5 text   (GPUs)
      -> write    CPU tasks:   one Parquet shard per batch, named by its sample ids

On the stage runner (``pipelines/stage.py``) a part is one sample; a shard is a commit
covering the samples it holds, written atomically, its done marker last. A killed run
resumes and a rerun duplicates nothing; a shard holding a sample the manifest no longer
lists is removed whole (its other samples are simply encoded again), so training never
sees a sample that was filtered out. A sample that fails to decode or encode becomes a
row of ``rejects/``.

Output under ``output``: ``latents/*.parquet`` (schema ``sama.latents.LATENTS``),
``rejects/*.parquet`` (``schemas.REJECTS``), ``summary.json``, ``config.yaml``.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import torch

from sama import media, storage
from sama.buckets import Bucket, BucketConfig, fit_to_bucket, make_buckets, nearest_bucket
from sama.config import JobConfig, JobEntry, to_dict
from sama.latents import LATENTS, TENSORS, pack, params_json
from sama.models.encoders import (
    SemanticConfig,
    TextEncoderConfig,
    VaeConfig,
    load_semantic_tokenizer,
    load_text_encoder,
    load_vae,
    video_to_tensor,
)
from sama.pretexts import IMAGE_EDIT_TAG, VIDEO_EDIT_TAG, PretextConfig, PretextSampler, compose_prompt
from sama.schemas import MANIFEST, REJECTS, held_out, read_table

from ..stage import Marker, Part, Stage, Table, dry_run_stage, run_stage, storage_retry

log = logging.getLogger(__name__)


@dataclass
class DecodeConfig:
    fps: float = 16.0  # frames are sampled at this rate (a faster clip skips frames)
    num_cpus: float = 1.0  # per decode task
    batch_size: int = 2  # samples per decode call


@dataclass
class EncodeConfig:
    num_gpus: float = 0.0  # per encoder actor; 0: CPU actors (tests, demo)
    num_cpus: float = 1.0
    actors: int = 1  # actor pool size
    max_actors: int | None = None  # autoscale the pool up to this many
    batch_size: int = 4  # samples per encode call (grouped by shape inside)
    storage_dtype: str = "auto"  # auto: bfloat16 when encoding on GPU, float32 on CPU

    def validate(self) -> None:
        if self.storage_dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"encode.storage_dtype={self.storage_dtype!r}: auto | float32 | bfloat16 | float16")


@dataclass
class PrecomputeConfig:
    manifest: str = ""  # a MANIFEST table folder (the filter job's output, or ingest's)
    stage: int = 0  # 0: text-to-video clips get a motion-alignment pretext on the source side
    tasks: list[str] = field(default_factory=lambda: ["t2v", "image_edit", "video_edit"])
    shard_size: int = 32  # rows per output shard
    holdout: float = 0.0  # this fraction of samples, by id, is never encoded: evaluate.split scores it
    buckets: BucketConfig = field(default_factory=BucketConfig)
    pretexts: PretextConfig = field(default_factory=PretextConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    vae: VaeConfig = field(default_factory=VaeConfig)
    semantic: SemanticConfig = field(default_factory=SemanticConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)

    def validate(self) -> None:
        if not self.manifest:
            raise ValueError("precompute.manifest is empty (the manifest folder to read)")
        if not 0 <= self.holdout < 1:
            raise ValueError(f"precompute.holdout={self.holdout}: a fraction in [0, 1)")
        if self.stage not in (0, 1):
            raise ValueError(f"precompute.stage={self.stage}: 0 (pre-training) or 1 (SFT)")
        bad = set(self.tasks) - {"t2v", "image_edit", "video_edit"}
        if bad:
            raise ValueError(f"precompute.tasks has unknown task(s) {sorted(bad)}")


@dataclass
class PrecomputeJobConfig(JobConfig):
    job: str = "precompute"
    output: str = "outputs/precompute"
    precompute: PrecomputeConfig = field(default_factory=PrecomputeConfig)


# --- decode (CPU) -----------------------------------------------------------------------------


def clip_indices(total: int, src_fps: float, fps: float, max_frames: int) -> list[int]:
    """Frame indices of a clip sampled at ``fps`` (never faster than the clip itself)."""
    step = max(1.0, (src_fps or fps) / fps)
    return [j for j in (int(round(i * step)) for i in range(max_frames)) if j < max(total, 1)]


def _read(
    uri: str, task: str, fps: float, probed_fps: float | None, probed_frames: int | None, max_frames: int
) -> np.ndarray:
    if task == "image_edit":
        return media.read_image(uri)[None]
    idx = clip_indices(int(probed_frames or max_frames), float(probed_fps or fps), fps, max_frames)
    return media.read_frames(uri, indices=idx)


def decode_sample(row: dict, cfg: PrecomputeConfig, buckets: list[Bucket]) -> dict:
    """One manifest row -> bucketed uint8 source/target frames + prompt and pretext (or MediaError).

    This is the whole sample-side transform; the job and the tests both call it.
    """
    task, mf = row["task"], cfg.buckets.max_frames
    tgt = _read(row["target_uri"], task, cfg.decode.fps, row.get("tgt_fps"), row.get("tgt_frames"), mf)
    bucket = nearest_bucket(tgt.shape[1], tgt.shape[2], buckets, cfg.buckets.match)
    tgt, _ = fit_to_bucket(tgt, cfg.buckets, bucket=bucket)
    pretext, params = "none", {}
    if task == "video_edit":
        src = _read(row["source_uri"], task, cfg.decode.fps, row.get("src_fps"), row.get("src_frames"), mf)
        src, _ = fit_to_bucket(src, cfg.buckets, bucket=bucket)
        n = min(len(src), len(tgt))  # both 4k+1, so the shorter is too
        src, tgt = src[:n], tgt[:n]
        prompt = compose_prompt(row["instruction"], VIDEO_EDIT_TAG)
    elif task == "image_edit":
        src, _ = fit_to_bucket(media.read_image(row["source_uri"])[None], cfg.buckets, bucket=bucket)
        prompt = compose_prompt(row["instruction"], IMAGE_EDIT_TAG)
    else:  # t2v: the source is the clip itself, perturbed by a pretext in stage 0
        pcfg = cfg.pretexts if cfg.stage == 0 else PretextConfig(enabled=False)
        res = PretextSampler(pcfg)(tgt, row["instruction"], seed=row["sample_id"])
        src, prompt, pretext, params = res.video, res.prompt, res.name, res.params
    return {
        "src": np.ascontiguousarray(src),
        "tgt": np.ascontiguousarray(tgt),
        "prompt": prompt,
        "pretext": pretext,
        "pretext_params": params_json(params),
        "bucket": f"{tgt.shape[0]}x{bucket.height}x{bucket.width}",
    }


DECODED = pa.schema(
    [
        ("sample_id", pa.string()),
        ("dataset", pa.string()),
        ("category", pa.string()),
        ("task", pa.string()),
        ("source_uri", pa.string()),
        ("target_uri", pa.string()),
        ("bucket", pa.string()),
        ("pretext", pa.string()),
        ("pretext_params", pa.string()),
        ("prompt", pa.string()),
        ("src_frames", pa.large_binary()),
        ("src_shape", pa.list_(pa.int32())),
        ("tgt_frames", pa.large_binary()),
        ("tgt_shape", pa.list_(pa.int32())),
        ("error_reason", pa.string()),
        ("error_detail", pa.string()),
    ]
)


class DecodeStage:
    """CPU stage: manifest rows -> frames (bytes + shape); failures become error rows."""

    def __init__(self, cfg: PrecomputeConfig):
        self.cfg = cfg
        self.buckets = make_buckets(cfg.buckets)

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = []
        for row in batch.to_pylist():
            base = {k: row[k] for k in ("sample_id", "dataset", "category", "task", "source_uri", "target_uri")}
            try:
                d = decode_sample(row, self.cfg, self.buckets)
            except media.MediaError as e:
                out.append({**base, "error_reason": e.reason, "error_detail": e.detail})
                continue
            except storage.StorageError:  # the storage's fault, not the sample's: the task is retried
                raise
            except Exception as e:  # a bug or an odd file must not kill the job: record it
                out.append({**base, "error_reason": "decode_error", "error_detail": f"{row['target_uri']}: {e!r}"})
                continue
            out.append(
                {
                    **base,
                    "bucket": d["bucket"],
                    "pretext": d["pretext"],
                    "pretext_params": d["pretext_params"],
                    "prompt": d["prompt"],
                    "src_frames": d["src"].tobytes(),
                    "src_shape": list(d["src"].shape),
                    "tgt_frames": d["tgt"].tobytes(),
                    "tgt_shape": list(d["tgt"].shape),
                }
            )
        return pa.Table.from_pylist(out, schema=DECODED)


def decode_batch(batch: pa.Table, cfg: PrecomputeConfig) -> pa.Table:
    """Stateless CPU task form of :class:`DecodeStage` (building it is cheap)."""
    return DecodeStage(cfg)(batch)


# --- encode (GPU actors) ------------------------------------------------------------------------

ENCODED = pa.schema(
    [f for f in LATENTS.schema]
    + [
        pa.field("source_uri", pa.string()),
        pa.field("target_uri", pa.string()),
        pa.field("error_reason", pa.string()),
        pa.field("error_detail", pa.string()),
    ]
)
ENCODED = pa.schema([f.with_nullable(True) for f in ENCODED])


class Encoders:
    """The three frozen encoders on one device; ``encode`` turns uint8 frames into tensors."""

    def __init__(self, vae: VaeConfig, semantic: SemanticConfig, text: TextEncoderConfig, device: str):
        self.device = torch.device(device)
        self.vae = load_vae(vae).to(self.device)
        self.semantic = load_semantic_tokenizer(semantic).to(self.device)
        self.text = load_text_encoder(text).to(self.device)

    @torch.no_grad()
    def encode(self, src: list[np.ndarray], tgt: list[np.ndarray], prompts: list[str]) -> list[dict[str, torch.Tensor]]:
        """Same-shaped clips (T, H, W, 3) uint8 -> per sample src/tgt latents, semantic tokens, text."""
        s = torch.stack([video_to_tensor(torch.from_numpy(v)) for v in src]).to(self.device)
        t = torch.stack([video_to_tensor(torch.from_numpy(v)) for v in tgt]).to(self.device)
        src_lat, tgt_lat = self.vae.encode(s), self.vae.encode(t)
        sem = self.semantic(t)
        emb, lens = self.text.encode(prompts)
        return [
            {
                "src_latent": src_lat[i],
                "tgt_latent": tgt_lat[i],
                "sem_tokens": sem[i],
                "text_emb": emb[i, : int(lens[i])],
            }
            for i in range(len(prompts))
        ]


class EncodeStage:
    """Actor stage: loads the encoders once, encodes batches grouped by shape."""

    def __init__(self, encode: EncodeConfig, vae: VaeConfig, semantic: SemanticConfig, text: TextEncoderConfig):
        gpu = encode.num_gpus > 0 and torch.cuda.is_available()
        self.encoders = Encoders(vae, semantic, text, "cuda" if gpu else "cpu")
        dtype = encode.storage_dtype
        self.dtype = ("bfloat16" if gpu else "float32") if dtype == "auto" else dtype

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        out: list[dict] = []
        groups: dict[tuple, list[dict]] = defaultdict(list)
        for r in rows:
            if r["error_reason"]:
                out.append(self._passthrough(r))
            else:
                groups[(tuple(r["src_shape"]), tuple(r["tgt_shape"]))].append(r)
        for (ss, ts), group in groups.items():
            try:
                src = [np.frombuffer(bytearray(r["src_frames"]), np.uint8).reshape(ss) for r in group]
                tgt = [np.frombuffer(bytearray(r["tgt_frames"]), np.uint8).reshape(ts) for r in group]
                encoded = self.encoders.encode(src, tgt, [r["prompt"] for r in group])
            except Exception as e:  # e.g. out of memory on a huge bucket: reject the group, keep going
                out.extend(
                    {**self._passthrough(r), "error_reason": "encode_error", "error_detail": f"{r['sample_id']}: {e!r}"}
                    for r in group
                )
                continue
            for r, tensors in zip(group, encoded):
                row = {
                    k: r[k]
                    for k in (
                        "sample_id",
                        "dataset",
                        "category",
                        "task",
                        "bucket",
                        "pretext",
                        "pretext_params",
                        "prompt",
                        "source_uri",
                        "target_uri",
                    )
                }
                for name in TENSORS:
                    row[name], row[f"{name}_shape"] = pack(tensors[name], self.dtype)
                row["dtype"] = self.dtype
                out.append(row)
        return pa.Table.from_pylist(out, schema=ENCODED)

    @staticmethod
    def _passthrough(r: dict) -> dict:
        return {
            k: r[k]
            for k in (
                "sample_id",
                "dataset",
                "category",
                "task",
                "source_uri",
                "target_uri",
                "error_reason",
                "error_detail",
            )
        }


# --- write (CPU) --------------------------------------------------------------------------------


def write_shard(batch: pa.Table, owner: PrecomputeStage) -> dict:
    """One batch -> ``latents/<name>.parquet`` + ``rejects/<name>.parquet`` and the marker of
    the samples they cover, named by those sample ids."""
    ids = sorted(batch["sample_id"].to_pylist())
    failed = pc.invert(pc.is_null(batch["error_reason"]))
    ok, bad = batch.filter(pc.invert(failed)), batch.filter(failed)
    rejects = [
        {
            "sample_id": r["sample_id"],
            "dataset": r["dataset"],
            "stage": "precompute",
            "reason": r["error_reason"],
            "detail": r["error_detail"],
            "source_uri": r["source_uri"],
            "target_uri": r["target_uri"],
        }
        for r in bad.to_pylist()
    ]
    latents = ok.select([f.name for f in LATENTS.schema]).cast(LATENTS.with_metadata())
    marker = owner.commit(f"part-{storage.content_digest(*ids, n=16)}", ids, {"latents": latents, "rejects": rejects})
    return {"marker": np.array([marker], dtype=object)}


# --- the job ------------------------------------------------------------------------------------


def bucket_order(manifest: pa.Table, buckets: BucketConfig) -> pa.Table:
    """``manifest`` sorted by (bucket guess, task, sample id), so batches share shapes."""
    shapes = make_buckets(buckets)
    guess = [
        str(nearest_bucket(h or 1, w or 1, shapes, buckets.match)) + t
        for h, w, t in zip(
            manifest["tgt_height"].to_pylist(), manifest["tgt_width"].to_pylist(), manifest["task"].to_pylist()
        )
    ]
    manifest = manifest.append_column("_order", pa.array(guess))
    return manifest.sort_by([("_order", "ascending"), ("sample_id", "ascending")]).drop_columns(["_order"])


class PrecomputeStage(Stage):
    """A part per manifest sample; a commit per written shard (the samples it covers)."""

    name = "precompute"
    tables = {
        "latents": Table(
            LATENTS,
            "latents",
            status="written",
            statuses=("written",),
            breakdown=("pretext", "bucket"),
            row_group_size=8,
            write_empty=False,
        ),
        "rejects": Table(
            REJECTS, "rejects", status="rejected", statuses=("rejected",), reason_column="reason", write_empty=False
        ),
    }

    def __init__(self, cfg: PrecomputeConfig, output: str):
        super().__init__(output)
        self.cfg = cfg

    def plan(self) -> list[Part]:
        manifest = read_table(self.cfg.manifest, MANIFEST)
        manifest = bucket_order(manifest.filter(pc.is_in(manifest["task"], pa.array(self.cfg.tasks))), self.cfg.buckets)
        return [
            Part(row["sample_id"], row)
            for row in manifest.to_pylist()
            if not held_out(row["sample_id"], self.cfg.holdout)
        ]

    def inputs(self) -> list[str]:
        return [self.cfg.manifest]

    def config_digest(self) -> str:
        return storage.content_digest(json.dumps(to_dict(self.cfg), sort_keys=True, default=str), n=12)

    def provenance(self) -> dict:
        p = self.cfg
        return {
            "encoders": {
                n: c.pretrained or "tiny random"
                for n, c in (("vae", p.vae), ("semantic", p.semantic), ("text", p.text))
            }
        }

    def execute(self, todo: list[Part]) -> list[Marker]:
        """decode (CPU tasks) -> encode (an actor pool, GPUs) -> write (CPU tasks), streaming."""
        p, enc = self.cfg, self.cfg.encode
        t0 = time.time()
        pool = ray.data.ActorPoolStrategy(min_size=enc.actors, max_size=enc.max_actors or enc.actors)
        ray.data.DataContext.get_current().enable_fallback_to_arrow_object_ext_type = True  # markers as objects
        ds = ray.data.from_arrow(MANIFEST.table([part.spec for part in todo]))
        ds = ds.map_batches(
            decode_batch,
            fn_kwargs={"cfg": p},
            batch_size=p.decode.batch_size,
            batch_format="pyarrow",
            num_cpus=p.decode.num_cpus,
            ray_remote_args_fn=storage_retry,
        )
        ds = ds.map_batches(
            EncodeStage,
            fn_constructor_kwargs={"encode": enc, "vae": p.vae, "semantic": p.semantic, "text": p.text},
            batch_size=enc.batch_size,
            batch_format="pyarrow",
            num_gpus=enc.num_gpus,
            num_cpus=enc.num_cpus,
            compute=pool,
        )
        ds = ds.map_batches(
            write_shard,
            fn_kwargs={"owner": self},
            batch_size=p.shard_size,
            batch_format="pyarrow",
            # I/O only: with a CPU of its own, a write waits until decoding frees one, and on a
            # busy cluster every shard would land at the very end (nothing kept if interrupted).
            num_cpus=0,
            ray_remote_args_fn=storage_retry,
        )
        markers = [row["marker"] for row in ds.take_all()]
        seconds = time.time() - t0
        log.info("precompute: %d samples in %.1fs (%.2f samples/s)", len(todo), seconds, len(todo) / max(seconds, 1e-9))
        return markers

    def summarize(self, summary: dict, markers) -> None:
        buckets: Counter[str] = Counter()
        for entry in summary["datasets"].values():
            buckets.update(entry.get("bucket", {}))
        summary["buckets"] = dict(sorted(buckets.items()))

    def report(self, summary: dict) -> None:
        for dataset, entry in summary["datasets"].items():
            print(
                f"{dataset:<16} written={entry['written']} rejected={entry['rejected']} "
                f"pretexts={entry.get('pretext', {})} reasons={entry['reasons']}"
            )
        print(f"latents: {storage.join(self.output, 'latents')}  buckets: {summary['buckets']}")

    def dry_run(self) -> list[str]:
        """Buckets, stages, encoders."""
        p, enc = self.cfg, self.cfg.encode
        buckets = make_buckets(p.buckets)
        frames = p.buckets.max_frames
        biggest = max(b.height * b.width for b in buckets)
        tokens = ((frames - 1) // 4 + 1) * biggest // (16 * 16)  # Wan VAE 8x, patch 2x
        lines = [
            f"buckets: {len(buckets)} ({', '.join(f'{b.height}x{b.width}' for b in buckets)}), frames <= {frames}",
            f"largest sample: {tokens} target tokens, {2 * tokens} with the source",
            f"decode: CPU tasks of {p.decode.batch_size} samples, {p.decode.num_cpus} CPU each, at {p.decode.fps} fps",
            f"encode: {enc.actors}..{enc.max_actors or enc.actors} actors x {enc.num_gpus} GPU, batches of "
            f"{enc.batch_size}, stored as {enc.storage_dtype}",
        ]
        for name, c in (("vae", p.vae), ("semantic", p.semantic), ("text", p.text)):
            lines.append(f"{name}: {c.pretrained or 'tiny random model'} ({c.dtype})")
        if enc.num_gpus == 0 and any(c.pretrained for c in (p.vae, p.semantic, p.text)):
            lines.append("warning: real encoders on CPU actors (encode.num_gpus=0) will be very slow")
        return lines


def run(cfg: PrecomputeJobConfig) -> dict:
    return run_stage(PrecomputeStage(cfg.precompute, cfg.output)).summary


def dry_run(cfg: PrecomputeJobConfig) -> list[str]:
    return dry_run_stage(PrecomputeStage(cfg.precompute, cfg.output))


JOB = JobEntry(PrecomputeJobConfig, run, dry_run)
