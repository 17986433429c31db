"""A synthetic editing world: coloured shapes moving over plain backgrounds, with exact edits.

Every clip is rendered from a :class:`Scene` (a background colour and shapes with a start
position and a velocity, bouncing off the borders), so an edit is rendered from the edited
scene with the same motion and is exact: a recolour changes only the named shape's
pixels, a removal only the pixels it covered, and so on. Edits: ``recolour`` a named shape,
``remove`` one, ``add`` one at a stated place, change the ``background``, a global ``style``
(black and white). Instructions come from templates with synonyms.

:func:`write_world` writes it in the layouts of real datasets, so it goes through ingest,
filter and precompute unchanged: text-to-video clips with captions (MotionBench layout,
stage 0), image-edit pairs of single frames (NHR-Edit layout) and video-edit pairs
(OpenVE-3M layout, one CSV per category). A held-out benchmark (other seeds, and shape and
colour combinations training never shows) is written as a user CSV with targets and masks.
"""

from __future__ import annotations

import csv
import json
import os
import random
from dataclasses import dataclass, replace

import numpy as np

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (50, 90, 220),
    "yellow": (235, 210, 40),
    "purple": (150, 60, 190),
    "orange": (245, 140, 30),
    "white": (240, 240, 240),
}
BACKGROUNDS = {"gray": (110, 110, 110), "navy": (25, 30, 70), "beige": (215, 200, 170), "teal": (30, 110, 110)}
KINDS = ("circle", "square", "triangle")
PLACES = {
    "top left": (0.25, 0.25),
    "top right": (0.25, 0.75),
    "bottom left": (0.75, 0.25),
    "bottom right": (0.75, 0.75),
}
HELD_OUT = {("triangle", "purple"), ("circle", "orange"), ("square", "white")}  # never in training
EDITS = ("recolour", "remove", "add", "background", "style")
OPENVE_CATEGORY = {
    "recolour": "local_change",
    "remove": "local_remove",
    "add": "local_add",
    "background": "background_change",
    "style": "global_style",
}
TEMPLATES = {
    "recolour": (
        "make the {colour} {kind} {new}",
        "turn the {colour} {kind} {new}",
        "paint the {colour} {kind} {new}",
        "change the colour of the {colour} {kind} to {new}",
    ),
    "remove": ("remove the {colour} {kind}", "delete the {colour} {kind}", "take away the {colour} {kind}"),
    "add": (
        "add a {new} {kind} at the {place}",
        "put a {new} {kind} in the {place}",
        "place a {new} {kind} at the {place}",
    ),
    "background": ("make the background {new}", "change the background to {new}", "turn the backdrop {new}"),
    "style": ("make it black and white", "turn the video black and white", "convert it to black and white"),
}


@dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    size: float  # radius / half side, as a fraction of the short side
    y: float  # start centre, fractions of height / width
    x: float
    vy: float  # fractions per frame
    vx: float


@dataclass(frozen=True)
class Scene:
    background: str
    shapes: tuple[Shape, ...]
    frames: int = 17
    height: int = 64
    width: int = 64
    gray: bool = False  # the black-and-white style


def _bounce(p: float, v: float, t: int, lo: float, hi: float) -> float:
    """Position at frame t of a point moving at v between lo and hi, reflected at both ends."""
    span = hi - lo
    if span <= 0:
        return lo
    q = (p - lo + v * t) % (2 * span)
    return lo + (q if q <= span else 2 * span - q)


def shape_mask(shape: Shape, t: int, height: int, width: int) -> np.ndarray:
    """(H, W) bool: the pixels the shape covers at frame t (hard edges: edits stay exact)."""
    r = shape.size * min(height, width)
    cy = _bounce(shape.y * height, shape.vy * height, t, r, height - r)
    cx = _bounce(shape.x * width, shape.vx * width, t, r, width - r)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    if shape.kind == "circle":
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    if shape.kind == "square":
        return (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r)
    # triangle, apex up: inside the band and between the two slanted sides
    top, bottom = cy - r, cy + r
    half = (yy - top) / (2 * r) * r
    return (yy >= top) & (yy <= bottom) & (np.abs(xx - cx) <= half)


def render(scene: Scene) -> np.ndarray:
    """(T, H, W, 3) uint8; later shapes are drawn over earlier ones."""
    out = np.empty((scene.frames, scene.height, scene.width, 3), np.uint8)
    for t in range(scene.frames):
        frame = np.empty((scene.height, scene.width, 3), np.uint8)
        frame[:] = BACKGROUNDS[scene.background]
        for shape in scene.shapes:
            frame[shape_mask(shape, t, scene.height, scene.width)] = COLOURS[shape.colour]
        out[t] = frame
    if scene.gray:
        luma = (out.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).round().astype(np.uint8)
        out = np.repeat(luma[..., None], 3, axis=-1)
    return out


def visible_mask(scene: Scene, index: int) -> np.ndarray:
    """(T, H, W) bool: where shape ``index`` shows (not covered by a later shape)."""
    masks = []
    for t in range(scene.frames):
        m = shape_mask(scene.shapes[index], t, scene.height, scene.width)
        for later in scene.shapes[index + 1 :]:
            m &= ~shape_mask(later, t, scene.height, scene.width)
        masks.append(m)
    return np.stack(masks)


def nearest_colour(rgb: np.ndarray) -> str:
    """The palette colour nearest an RGB triple (0..255): what a shape reads as."""
    rgb = np.asarray(rgb, np.float32)
    return min(COLOURS, key=lambda c: float(np.sum((np.array(COLOURS[c], np.float32) - rgb) ** 2)))


def caption(scene: Scene) -> str:
    things = " and ".join(f"a {s.colour} {s.kind}" for s in scene.shapes)
    return f"{things} moving over a {scene.background} background"


@dataclass
class Example:
    kind: str  # one of EDITS
    instruction: str
    source: Scene
    target: Scene
    shape: int | None  # the shape the edit names (index in the scene it lives in), if any
    colour: str | None  # the requested colour (recolour, add, background)


def random_shape(rng: random.Random, held_out: bool, kinds=KINDS, colours=tuple(COLOURS)) -> Shape:
    while True:
        kind, colour = rng.choice(kinds), rng.choice(colours)
        if held_out or (kind, colour) not in HELD_OUT:
            break
    return Shape(
        kind,
        colour,
        rng.uniform(0.12, 0.2),
        rng.uniform(0.25, 0.75),
        rng.uniform(0.25, 0.75),
        rng.uniform(-0.03, 0.03),
        rng.uniform(-0.04, 0.04),
    )


def random_scene(rng: random.Random, frames: int, size: int, held_out: bool = False) -> Scene:
    shapes: list[Shape] = []
    for _ in range(rng.choice((1, 2))):
        s = random_shape(rng, held_out=False)
        if all((s.kind, s.colour) != (o.kind, o.colour) for o in shapes):  # names stay unambiguous
            shapes.append(s)
    return Scene(rng.choice(tuple(BACKGROUNDS)), tuple(shapes), frames, size, size)


def random_example(
    rng: random.Random, frames: int = 17, size: int = 64, held_out: bool = False, kind: str | None = None
) -> Example:
    """A source scene and one edit of it. Held out: a recolour to (or an added shape in) a shape
    and colour combination training never shows."""
    scene = random_scene(rng, frames, size)
    kind = kind or rng.choice(EDITS)
    template = rng.choice(TEMPLATES[kind])
    if kind in ("recolour", "remove"):
        i = rng.randrange(len(scene.shapes))
        old = scene.shapes[i]
        if kind == "remove":
            target = replace(scene, shapes=scene.shapes[:i] + scene.shapes[i + 1 :])
            return Example(kind, template.format(colour=old.colour, kind=old.kind), scene, target, i, None)
        choices = [
            c
            for c in COLOURS
            if c != old.colour
            and ((old.kind, c) in HELD_OUT) == held_out
            and all((o.kind, o.colour) != (old.kind, c) for o in scene.shapes)
        ]
        if not choices:
            return random_example(rng, frames, size, held_out, kind)
        new = rng.choice(choices)
        target = replace(
            scene, shapes=tuple(replace(s, colour=new) if j == i else s for j, s in enumerate(scene.shapes))
        )
        return Example(kind, template.format(colour=old.colour, kind=old.kind, new=new), scene, target, i, new)
    if kind == "add":
        place = rng.choice(tuple(PLACES))
        y, x = PLACES[place]
        while True:
            added = replace(random_shape(rng, held_out), y=y, x=x, vy=0.0, vx=0.0)
            if ((added.kind, added.colour) in HELD_OUT) == held_out:
                break
        target = replace(scene, shapes=scene.shapes + (added,))
        instruction = template.format(new=added.colour, kind=added.kind, place=place)
        return Example(kind, instruction, scene, target, len(target.shapes) - 1, added.colour)
    if kind == "background":
        new = rng.choice([b for b in BACKGROUNDS if b != scene.background])
        return Example(kind, template.format(new=new), scene, replace(scene, background=new), None, new)
    if all(len(set(c)) == 1 for c in (BACKGROUNDS[scene.background], *(COLOURS[s.colour] for s in scene.shapes))):
        return random_example(rng, frames, size, held_out, kind)  # already black and white: no edit to make
    return Example(kind, template, scene, replace(scene, gray=True), None, None)


# --- writing it as datasets ------------------------------------------------------------------------


def _write_clip(path: str, frames: np.ndarray, fps: int = 8) -> None:
    from sama.media import write_mp4

    write_mp4(path, frames, fps, crf=10)


def _write_image(path: str, frame: np.ndarray) -> None:
    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(frame).save(path)


@dataclass
class World:
    root: str
    datasets: dict[str, str]  # ingest.datasets.<name>.root -> folder
    openve_categories: list[str]
    benchmark: str  # a user CSV: source, instruction, category, id, target, mask
    items: dict[str, dict]  # benchmark item id -> kind, colour (RGB) requested, ...

    def ingest_overrides(self) -> list[str]:
        out = [f"ingest.datasets.{name}.root={root}" for name, root in self.datasets.items()]
        return out + [f"ingest.datasets.openve3m.categories=[{','.join(self.openve_categories)}]"]


def write_world(
    root: str,
    clips: int = 24,
    pairs: int = 24,
    images: int = 16,
    held_out: int = 12,
    frames: int = 17,
    size: int = 64,
    seed: int = 0,
) -> World:
    """The world under ``root``: training data in three dataset layouts and a held-out benchmark."""
    rng = random.Random(seed)
    mb, nhr, ove, bench = (os.path.join(root, d) for d in ("motionbench", "nhr_edit", "openve", "bench"))
    records = []
    for i in range(clips):  # text-to-video clips with captions: stage 0 (the motion pretexts apply)
        scene = random_scene(rng, frames, size)
        _write_clip(os.path.join(mb, "videos", f"w{i:04d}.mp4"), render(scene))
        records.append({"video_path": f"videos/w{i:04d}.mp4", "motion_caption": caption(scene)})
    _jsonl(os.path.join(mb, "train.jsonl"), records)
    records = []
    for i in range(images):  # image-edit pairs: one frame of a source and of its edit
        ex = random_example(rng, 1, size)
        _write_image(os.path.join(nhr, "train", "images", "00", f"w{i:04d}_original.png"), render(ex.source)[0])
        _write_image(os.path.join(nhr, "train", "images", "00", f"w{i:04d}_edited_0.png"), render(ex.target)[0])
        records.append(
            {
                "original_image": f"images/00/w{i:04d}_original.png",
                "edited_image": f"images/00/w{i:04d}_edited_0.png",
                "instruction": ex.instruction,
                "edit_type": ex.kind,
            }
        )
    _jsonl(os.path.join(nhr, "train", "metadata.jsonl"), records)
    rows: dict[str, list] = {c: [] for c in OPENVE_CATEGORY.values()}
    for i in range(pairs):  # video-edit pairs: stage 1
        ex = random_example(rng, frames, size, kind=EDITS[i % len(EDITS)])
        _write_clip(os.path.join(ove, "videos", f"w{i:04d}_src.mp4"), render(ex.source))
        _write_clip(os.path.join(ove, "videos", f"w{i:04d}_tgt.mp4"), render(ex.target))
        category = OPENVE_CATEGORY[ex.kind]
        rows[category].append([f"videos/w{i:04d}_src.mp4", f"videos/w{i:04d}_tgt.mp4", ex.instruction, category])
    for category, lines in rows.items():
        _csv(os.path.join(ove, f"{category}.csv"), ["original_video", "video", "prompt", "edited_type"], lines)
    bench_csv, items = write_benchmark(bench, held_out, frames, size, seed)
    return World(
        root,
        {"motionbench": mb, "nhr_edit": nhr, "openve3m": ove},
        sorted(rows),
        bench_csv,
        items,
    )


def write_benchmark(bench: str, n: int, frames: int = 17, size: int = 64, seed: int = 0) -> tuple[str, dict[str, dict]]:
    """The held-out benchmark under ``bench`` (sources, targets, edit masks, ``bench.csv``,
    ``items.json``): its own seeds and the combinations training never shows, the edit kinds in
    turn. The first ``k`` items of any ``n >= k`` are the same, so a larger set extends the demo's."""
    held = random.Random(seed + 10_000)
    lines, items = [], {}
    for i in range(n):
        ex = random_example(held, frames, size, held_out=True, kind=EDITS[i % len(EDITS)])
        item = f"h{i:03d}"
        _write_clip(os.path.join(bench, "source", f"{item}.mp4"), render(ex.source))
        _write_clip(os.path.join(bench, "target", f"{item}.mp4"), render(ex.target))
        mask = _edit_mask(ex)
        _write_clip(
            os.path.join(bench, "mask", f"{item}.mp4"), np.repeat(mask[..., None] * 255, 3, -1).astype(np.uint8)
        )
        lines.append([f"source/{item}.mp4", ex.instruction, ex.kind, item, f"target/{item}.mp4", f"mask/{item}.mp4"])
        items[item] = {
            "kind": ex.kind,
            "instruction": ex.instruction,
            "colour": ex.colour,
            "rgb": COLOURS.get(ex.colour or "", None),
            "shape": ex.shape,
        }
    _csv(os.path.join(bench, "bench.csv"), ["source", "instruction", "category", "id", "target", "mask"], lines)
    with open(os.path.join(bench, "items.json"), "w") as f:
        json.dump(items, f, indent=1)
    return os.path.join(bench, "bench.csv"), items


def _edit_mask(ex: Example) -> np.ndarray:
    """(T, H, W) bool: the pixels the edit changes (exact, from the two scenes)."""
    return np.any(render(ex.source) != render(ex.target), axis=-1)


def _csv(path: str, header: list[str], rows: list[list]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])


def _jsonl(path: str, records: list[dict]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
