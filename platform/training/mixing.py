"""Dataset mixing and bucket batches with a resumable, deterministic position.

A training step draws its batch from one *source* (e.g. image-edit pairs, text-to-video
clips), chosen by a random draw seeded by ``(seed, step)``: every rank picks the same
source at the same step, and a resumed run picks what the uninterrupted one did. The
batch itself comes from that source's :class:`BucketStream` on this rank: its rows,
shuffled by a buffer seeded by ``(seed, source, rank, epoch)``, grouped into batches that
share one bucket shape (``sama.latents.bucket_batches``), cycling over epochs forever.

A stream's position is ``(epoch, batches taken in that epoch)``, and resuming *seeks* to it:
an epoch's batches are planned from a light index of the rank's rows (task, bucket, shape:
no tensors), by the same shuffle and bucket grouping the rows would go through, so the plan
is a pure function of the rank's files and the seed. Resuming recomputes the plan, skips the
batches already taken without reading them, and opens the row stream at the first row still
needed (at most a shuffle buffer behind the position), so no row is seen twice or skipped
and the rows read again are bounded by the buffer, not by the position.
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
            raise ValueError(
                f"source {self.name!r} mixes image and video tasks; use one source per family "
                "(they take different batch sizes)"
            )
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


RowOpener = Callable[[int, int], Iterable[dict]]  # (epoch, first index) -> rows with "_e", "_i"


class BucketStream:
    """Endless batches of one source on one rank, with a position resumed by seeking.

    ``index``: the rank's rows of one epoch in stream order, as small dicts with the fields
    :func:`sama.latents.batch_key` reads (task, bucket, src_latent_shape). ``open_rows(epoch,
    start)``: the full rows from stream index ``start`` of ``epoch`` on (later epochs may
    follow), each carrying its epoch ``_e`` and index ``_i``. Each epoch is shuffled by its
    own seed and grouped into bucket batches; its last, short batches are flushed, never
    dropped. ``rows_read`` counts the rows pulled from the stream (none twice per epoch,
    except at most a buffer's worth after a resume).
    """

    def __init__(
        self,
        name: str,
        index: list[dict],
        open_rows: RowOpener,
        batch_size: int,
        seed: int,
        rank: int = 0,
        shuffle_buffer: int = 64,
        max_pending: int = 64,
        position: tuple[int, int] = (0, 0),
    ):
        if not index:
            raise ValueError(f"data source {name!r} has no rows on rank {rank}")
        self.name, self.index, self.open_rows = name, index, open_rows
        self.batch_size, self.seed, self.rank = batch_size, seed, rank
        self.shuffle_buffer, self.max_pending = shuffle_buffer, max_pending
        self.epoch, self.taken = position
        self.rows_read = 0
        self._plan: list[list[int]] | None = None
        self._needed: set[int] = set()  # indices of this epoch's remaining batches
        self._rows: dict[int, dict] = {}  # pulled ahead of their batch
        self._stream: Iterator[dict] | None = None

    @property
    def position(self) -> tuple[int, int]:
        return self.epoch, self.taken

    def plan(self, epoch: int) -> list[list[int]]:
        """The epoch's batches as row indices: the shuffle and bucket grouping, run on the index."""
        rng = random.Random(seed_of("shuffle", self.seed, self.name, self.rank, epoch))
        light = ({**r, "_i": i} for i, r in enumerate(self.index))
        batches = bucket_batches(
            shuffled(light, self.shuffle_buffer, rng), self.batch_size, max_pending=self.max_pending
        )
        return [[r["_i"] for r in b] for b in batches]

    def _next_epoch_if_done(self) -> None:
        if self._plan is None:
            self._plan = self.plan(self.epoch)
            self._needed = {i for b in self._plan[self.taken :] for i in b}
        if self.taken >= len(self._plan):  # the epoch is served: the next one
            self.epoch, self.taken = self.epoch + 1, 0
            self._plan = self.plan(self.epoch)
            self._needed = set(range(len(self.index)))
            self._rows.clear()

    def _pull(self) -> dict:
        for _ in range(2):
            if self._stream is None:  # (re)open at the first row still needed
                self._stream = iter(self.open_rows(self.epoch, min(self._needed)))
            row = next(self._stream, None)
            if row is not None:
                self.rows_read += 1
                return row
            self._stream = None  # this pass is exhausted: the next opens where we are
        raise RuntimeError(
            f"data source {self.name!r} on rank {self.rank}: the stream has no rows for epoch "
            f"{self.epoch} from index {min(self._needed)}"
        )

    def __iter__(self) -> BucketStream:
        return self

    def __next__(self) -> list[dict]:
        self._next_epoch_if_done()
        wanted = self._plan[self.taken]
        while any(i not in self._rows for i in wanted):
            row = self._pull()
            e, i = row["_e"], row["_i"]
            if e != self.epoch or i not in self._needed:
                if e > self.epoch:  # the stream is past us (opened elsewhere): open it again here
                    self._stream = None
                continue  # taken before this run resumed, or another epoch's row
            self._rows[i] = row
        batch = [self._rows.pop(i) for i in wanted]
        self._needed.difference_update(wanted)
        self.taken += 1
        return batch


def passes_needed(steps: int, share: float, batch_per_rank: int, rows_per_epoch: int, cap: int = 16) -> int:
    """Epochs one pass over a rank's files should stream so a run of ``steps`` needs one pass."""
    rows = steps * share * batch_per_rank * 1.25 + batch_per_rank
    return int(min(cap, max(1, -(-rows // max(rows_per_epoch, 1)))))
