"""Dataset mixing and bucket batches with a resumable, deterministic position.

A training step draws its batch from one *source* (e.g. image-edit pairs, text-to-video
clips), chosen by a random draw seeded by ``(seed, step)``: every rank picks the same
source at the same step, and a resumed run picks what the uninterrupted one did. The
batch itself comes from that source's :class:`BucketStream` on this rank: its rows,
shuffled by a buffer seeded by ``(seed, source, rank, epoch)``, grouped into batches that
share one bucket shape (``sama.latents.bucket_batches``), cycling over epochs forever.

A stream's position is ``(epoch, batches taken in that epoch)``; resuming replays the
epoch up to there (the row order is a pure function of the rank's shard files and the
seed), so no row is seen twice or skipped.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from sama.latents import bucket_batches

IMAGE_TASKS = frozenset({"image_edit"})
VIDEO_TASKS = frozenset({"t2v", "video_edit"})


def seed_of(*parts: object) -> int:
    """A 63-bit seed from any parts (stable across processes, unlike ``hash``)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


@dataclass
class SourceConfig:
    """One stream of the mixture: rows of ``tasks`` from the latent shards under ``uri``."""

    name: str = ""
    uri: str = ""  # a precompute output's latents/ folder (local or s3://)
    tasks: list[str] = field(default_factory=lambda: ["image_edit"])
    weight: float = 1.0  # relative share of steps drawn from this source

    def validate(self) -> None:
        if not self.name or not self.uri:
            raise ValueError("every data source needs a name and a uri")
        bad = set(self.tasks) - IMAGE_TASKS - VIDEO_TASKS
        if bad or not self.tasks:
            raise ValueError(f"source {self.name!r}: unknown or no tasks {sorted(bad)}")
        if set(self.tasks) & IMAGE_TASKS and set(self.tasks) & VIDEO_TASKS:
            raise ValueError(f"source {self.name!r} mixes image and video tasks; use one source per family "
                             "(they take different batch sizes)")
        if self.weight <= 0:
            raise ValueError(f"source {self.name!r}: weight must be > 0")

    @property
    def family(self) -> str:
        return "image" if set(self.tasks) <= IMAGE_TASKS else "video"


def pick_source(names: Sequence[str], weights: Sequence[float], seed: int, step: int) -> str:
    """The source of step ``step``: the same on every rank and after any resume."""
    return random.Random(seed_of("mix", seed, step)).choices(list(names), weights=list(weights), k=1)[0]


def shuffled(rows: Iterable[dict], buffer: int, rng: random.Random) -> Iterator[dict]:
    """Buffered shuffle: keep ``buffer`` rows, emit a random one per new row (memory bounded)."""
    if buffer <= 1:
        yield from rows
        return
    pool: list[dict] = []
    for row in rows:
        pool.append(row)
        if len(pool) >= buffer:
            i = rng.randrange(len(pool))
            pool[i], pool[-1] = pool[-1], pool[i]
            yield pool.pop()
    rng.shuffle(pool)
    yield from pool


class BucketStream:
    """Endless batches of one source on one rank, with a resumable position.

    ``open_rows()`` streams the rank's rows for ``epochs_per_pass`` epochs back to back (a
    Ray Data iterator over the rank's files listed that many times, so a tiny dataset does
    not pay a pipeline start per epoch), in the same order every time it is called;
    ``rows_per_epoch`` cuts that stream into epochs. Each epoch is shuffled by its own seed
    and grouped into bucket batches; its last, short batches are flushed, never dropped.
    """

    def __init__(self, name: str, open_rows: Callable[[], Iterable[dict]], rows_per_epoch: int, batch_size: int,
                 seed: int, rank: int = 0, epochs_per_pass: int = 1, shuffle_buffer: int = 64,
                 max_pending: int = 64, position: tuple[int, int] = (0, 0)):
        if rows_per_epoch < 1:
            raise ValueError(f"data source {name!r} has no rows on rank {rank}")
        self.name, self.open_rows, self.rows_per_epoch = name, open_rows, rows_per_epoch
        self.batch_size, self.seed, self.rank, self.epochs_per_pass = batch_size, seed, rank, max(1, epochs_per_pass)
        self.shuffle_buffer, self.max_pending = shuffle_buffer, max_pending
        self.epoch, self.taken = position
        self._rows: Iterator[dict] | None = None
        self._batches: Iterator[list[dict]] | None = None

    @property
    def position(self) -> tuple[int, int]:
        return self.epoch, self.taken

    def _epoch_rows(self) -> Iterator[dict]:
        if self._rows is None or self.epoch % self.epochs_per_pass == 0:
            self._rows = iter(self.open_rows())
            for _ in range((self.epoch % self.epochs_per_pass) * self.rows_per_epoch):  # resume mid-pass
                next(self._rows)
        for _ in range(self.rows_per_epoch):
            row = next(self._rows, None)
            if row is None:
                raise RuntimeError(f"data source {self.name!r} on rank {self.rank}: the stream ended before "
                                   f"{self.rows_per_epoch} rows of epoch {self.epoch}")
            yield row

    def _start_epoch(self) -> Iterator[list[dict]]:
        rng = random.Random(seed_of("shuffle", self.seed, self.name, self.rank, self.epoch))
        rows = shuffled(self._epoch_rows(), self.shuffle_buffer, rng)
        it = bucket_batches(rows, self.batch_size, max_pending=self.max_pending)
        for _ in range(self.taken):  # replay to the saved position
            next(it)
        return it

    def __iter__(self) -> BucketStream:
        return self

    def __next__(self) -> list[dict]:
        if self._batches is None:
            self._batches = self._start_epoch()
        batch = next(self._batches, None)
        if batch is None:  # epoch done: the next one
            self.epoch, self.taken = self.epoch + 1, 0
            self._batches = self._start_epoch()
            batch = next(self._batches)
        self.taken += 1
        return batch


def passes_needed(steps: int, share: float, batch_per_rank: int, rows_per_epoch: int, cap: int = 16) -> int:
    """Epochs one pass over a rank's files should stream so a run of ``steps`` needs one pass."""
    rows = steps * share * batch_per_rank * 1.25 + batch_per_rank
    return int(min(cap, max(1, -(-rows // max(rows_per_epoch, 1)))))
