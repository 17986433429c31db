"""Judge rubrics per task, written for this project from the public rubrics in DATASETS.md.

- video_edit: OpenVE-Bench's three 1-5 scores (compliance, fidelity, quality; the
  latter two capped by the first) + yes/no defect flags of coarse clip filters.
- image_edit: compliance / realism / preservation / technical quality weighted
  40/25/20/15 on 0-10, as image-edit sets scored by a VLM do.
- t2v: caption match, visual and motion quality on 1-5 + the coarse clip-filter flags
  (slideshow, synthetic, heavy text, video-in-video, ...).

Benchmark rubrics for the evaluation job (``EVAL_RUBRICS``, same form):

- openve: OpenVE-Bench's three 1-5 scores, the second and third capped by the first;
- reco: ReCo-Bench's nine 0-10 sub-scores in three groups (geometric mean per group,
  arithmetic mean of the groups overall);
- vie: VIE-Bench's 0-10 instruction following and quality.

A rubric's ``version`` is part of the judge cache key and is written with every
verdict: change the wording or the criteria -> bump the version.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Criterion:
    name: str
    description: str
    lo: int
    hi: int
    weight: float = 1.0


@dataclass(frozen=True)
class Rubric:
    task: str
    version: str
    intro: str
    criteria: tuple[Criterion, ...]
    flags: tuple[tuple[str, str], ...] = ()  # (name, yes/no question): "yes" is a defect
    capped_by: str | None = None  # every other criterion may not exceed this one (OpenVE rule)
    groups: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (group, criteria): geometric mean per group (ReCo)
    system: str = "You are a strict, consistent data-quality judge. Reply with JSON only."

    def names(self) -> list[str]:
        return [c.name for c in self.criteria]

    def response_schema(self) -> dict:
        """JSON schema of the answer (sent as ``response_format`` for structured output)."""
        scores = {c.name: {"type": "integer", "minimum": c.lo, "maximum": c.hi} for c in self.criteria}
        props: dict = {
            "scores": {"type": "object", "properties": scores, "required": self.names(), "additionalProperties": False}
        }
        if self.flags:
            fl = {n: {"type": "boolean"} for n, _ in self.flags}
            props["flags"] = {
                "type": "object",
                "properties": fl,
                "required": [n for n, _ in self.flags],
                "additionalProperties": False,
            }
        props["reason"] = {"type": "string"}
        return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}

    def prompt(self, instruction: str, n_source: int, n_target: int) -> str:
        lines = [self.intro, ""]
        if n_source:
            lines.append(
                f"The first {n_source} image(s) are frames of the SOURCE, the next {n_target} of the TARGET, "
                "each sampled uniformly in time."
            )
        else:
            lines.append(f"The {n_target} image(s) are frames of the CLIP, sampled uniformly in time.")
        label = "Caption" if self.task == "t2v" else "Edit instruction"
        lines += ["", f"{label}: {instruction.strip()}", "", "Score each criterion (integers):"]
        lines += [f"- {c.name} ({c.lo}-{c.hi}): {c.description}" for c in self.criteria]
        if self.capped_by:
            lines.append(f"No other score may exceed {self.capped_by}.")
        for group, names in self.groups:
            lines.append(f"({group}: {', '.join(names)})")
        if self.flags:
            lines += ["", "Answer each flag true (the defect is present) or false:"]
            lines += [f"- {n}: {q}" for n, q in self.flags]
        example = {"scores": {c.name: c.hi for c in self.criteria}}
        if self.flags:
            example["flags"] = {n: False for n, _ in self.flags}
        example["reason"] = "one short sentence"
        lines += ["", "Reply with exactly one JSON object and nothing else, shaped like:", json.dumps(example)]
        return "\n".join(lines)


EDIT_FLAGS = (
    ("artifacts", "Does the target show visible artifacts, distortion or corrupted regions?"),
    ("heavy_text", "Is the target dominated by overlaid text, watermarks or logos not asked for?"),
)

RUBRICS: dict[str, Rubric] = {
    r.task: r
    for r in (
        Rubric(
            "video_edit",
            "video_edit-v1",
            "You judge training data for instruction-guided video editing: a source video, an edit "
            "instruction and the edited target video.",
            (
                Criterion("instruction_compliance", "the target carries out the instruction, fully and only it", 1, 5),
                Criterion(
                    "fidelity",
                    "everything the instruction does not touch is preserved: identity, layout, "
                    "motion and detail of the source",
                    1,
                    5,
                ),
                Criterion(
                    "visual_quality",
                    "the target is sharp, natural and temporally stable (no flicker, no drifting edits)",
                    1,
                    5,
                ),
            ),
            EDIT_FLAGS + (("flicker", "Does the edited region flicker or change from frame to frame?"),),
            capped_by="instruction_compliance",
        ),
        Rubric(
            "image_edit",
            "image_edit-v1",
            "You judge training data for instruction-guided image editing: a source image, an edit "
            "instruction and the edited target image.",
            (
                Criterion(
                    "instruction_compliance", "the target carries out the instruction, fully and only it", 0, 10, 0.40
                ),
                Criterion("realism", "the edit looks natural: lighting, scale, perspective, shadows", 0, 10, 0.25),
                Criterion("preservation", "everything the instruction does not touch is unchanged", 0, 10, 0.20),
                Criterion("technical_quality", "sharp, no artifacts, no blur or compression damage", 0, 10, 0.15),
            ),
            EDIT_FLAGS,
        ),
        Rubric(
            "t2v",
            "t2v-v1",
            "You judge training clips for a text-to-video model: a video clip and its caption.",
            (
                Criterion("caption_match", "the caption describes what happens in the clip", 1, 5),
                Criterion("visual_quality", "sharp, well exposed, natural footage", 1, 5),
                Criterion("motion_quality", "clear, natural motion of subject or camera", 1, 5),
            ),
            (
                ("slideshow", "Is it a slideshow of still images rather than continuous video?"),
                ("synthetic", "Is it synthetic (screen recording, game, rendered graphics)?"),
                ("heavy_text", "Is there heavy post-production text, subtitles or logos?"),
                ("video_in_video", "Does it show a video inside a video (picture in picture, a filmed screen)?"),
                ("artifacts", "Are there compression artifacts or distortion?"),
                ("little_motion", "Is there almost no motion?"),
                ("abrupt_camera", "Are there abrupt camera jumps or shaky motion?"),
                ("unnatural_speed", "Does it play at an unnatural speed (sped up, slowed down)?"),
            ),
        ),
    )
}


EVAL_SYSTEM = "You are a strict, consistent judge of video edits for a benchmark. Reply with JSON only."

EVAL_RUBRICS: dict[str, Rubric] = {
    r.task: r
    for r in (
        Rubric(
            "openve",
            "openve-v1",
            "You judge an instruction-guided video edit for a benchmark: a source video, an edit instruction "
            "and the edited video. Judge the edited video against both.",
            (
                Criterion("instruction_compliance", "the edit carries out the instruction, fully and only it", 1, 5),
                Criterion(
                    "detail_fidelity",
                    "consistency and detail fidelity: what the instruction does not touch "
                    "(identity, layout, background, motion, fine detail) is preserved from the source",
                    1,
                    5,
                ),
                Criterion(
                    "visual_quality",
                    "visual quality and stability: sharp, natural, no artifacts, no flicker or drift over time",
                    1,
                    5,
                ),
            ),
            capped_by="instruction_compliance",
            system=EVAL_SYSTEM,
        ),
        Rubric(
            "reco",
            "reco-v1",
            "You judge an instruction-guided video edit for a benchmark: a source video, an edit instruction "
            "and the edited video. Score each aspect from 0 (fails entirely) to 10 (perfect).",
            (
                Criterion("semantic_accuracy", "the edited content is what the instruction asks for", 0, 10),
                Criterion("scope_precision", "only the region or attribute named by the instruction changed", 0, 10),
                Criterion("content_preservation", "everything else is identical to the source", 0, 10),
                Criterion("appearance", "the edited content looks natural: lighting, colour, texture", 0, 10),
                Criterion("scale", "the edited content has plausible size and perspective in the scene", 0, 10),
                Criterion("motion", "the edited content moves naturally and with the scene", 0, 10),
                Criterion("fidelity", "the frames are sharp and free of artifacts", 0, 10),
                Criterion("temporal_stability", "the video is stable over time: no flicker, no jitter", 0, 10),
                Criterion(
                    "edit_stability", "the edit itself stays consistent across frames (no drift, no popping)", 0, 10
                ),
            ),
            groups=(
                ("edit_accuracy", ("semantic_accuracy", "scope_precision", "content_preservation")),
                ("naturalness", ("appearance", "scale", "motion")),
                ("quality", ("fidelity", "temporal_stability", "edit_stability")),
            ),
            system=EVAL_SYSTEM,
        ),
        Rubric(
            "vie",
            "vie-v1",
            "You judge an instruction-guided video edit for a benchmark: a source video, an edit instruction "
            "and the edited video. Score from 0 (fails entirely) to 10 (perfect).",
            (
                Criterion("instruction_following", "the edit does what the instruction asks, and nothing else", 0, 10),
                Criterion(
                    "quality",
                    "the edited video is natural, sharp, temporally coherent and preserves the source where it should",
                    0,
                    10,
                ),
            ),
            system=EVAL_SYSTEM,
        ),
    )
}


class MalformedAnswer(ValueError):
    """A judge's reply that is not a valid answer for its rubric; the message says why."""


@dataclass
class Answer:
    scores: dict[str, float]
    flags: dict[str, bool] = field(default_factory=dict)
    reason: str = ""

    def to_json(self) -> dict:
        return {"scores": self.scores, "flags": self.flags, "reason": self.reason}


_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.S)


def parse_answer(text: str | None, rubric: Rubric) -> Answer:
    """Strict: one JSON object with every criterion an in-range integer and every flag a bool."""
    if not text or not text.strip():
        raise MalformedAnswer("empty reply")
    body = text.strip()
    m = _FENCE.match(body)  # models often fence JSON in ``` even when told not to
    if m:
        body = m.group(1)
    try:
        data = json.loads(body)
    except json.JSONDecodeError as e:
        raise MalformedAnswer(f"not JSON ({e.msg} at {e.pos}): {body[:80]!r}") from None
    if not isinstance(data, dict) or not isinstance(data.get("scores"), dict):
        raise MalformedAnswer("no 'scores' object")
    scores: dict[str, float] = {}
    for c in rubric.criteria:
        v = data["scores"].get(c.name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != int(v):
            raise MalformedAnswer(f"score '{c.name}' missing or not an integer: {v!r}")
        if not c.lo <= v <= c.hi:
            raise MalformedAnswer(f"score '{c.name}' = {v} outside {c.lo}-{c.hi}")
        scores[c.name] = float(v)
    unknown = sorted(set(data["scores"]) - set(scores))
    if unknown:
        raise MalformedAnswer(f"unknown score(s) {unknown}")
    flags: dict[str, bool] = {}
    if rubric.flags:
        raw = data.get("flags")
        if not isinstance(raw, dict):
            raise MalformedAnswer("no 'flags' object")
        for n, _ in rubric.flags:
            if not isinstance(raw.get(n), bool):
                raise MalformedAnswer(f"flag '{n}' missing or not true/false: {raw.get(n)!r}")
            flags[n] = raw[n]
    reason = data.get("reason", "")
    return Answer(scores, flags, reason if isinstance(reason, str) else str(reason))


@dataclass
class KeepRule:
    """What a judged sample needs to be kept. Scores are normalised to 0..1 per criterion."""

    min_overall: dict[str, float] = field(default_factory=lambda: {"video_edit": 0.6, "image_edit": 0.6, "t2v": 0.6})
    min_scores: dict[str, float] = field(default_factory=lambda: {"instruction_compliance": 0.5, "caption_match": 0.5})
    drop_on_flags: list[str] = field(default_factory=lambda: ["*"])  # flag names that drop when true; "*": all

    def validate(self) -> None:
        for k, v in {**self.min_overall, **self.min_scores}.items():
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"'{k}' = {v}: thresholds are on normalised scores, 0..1")


def decide(answer: Answer, rubric: Rubric, rule: KeepRule) -> tuple[bool, float, list[str]]:
    """(keep, overall 0..1, reasons for dropping) from a validated answer."""
    norm = {c.name: (answer.scores[c.name] - c.lo) / (c.hi - c.lo) for c in rubric.criteria}
    if rubric.capped_by:
        cap = norm[rubric.capped_by]
        norm = {k: min(v, cap) for k, v in norm.items()}
    total_w = sum(c.weight for c in rubric.criteria)
    overall = sum(norm[c.name] * c.weight for c in rubric.criteria) / total_w
    reasons = []
    floor = rule.min_overall.get(rubric.task, 0.0)
    if overall < floor:
        reasons.append(f"judge:overall<{floor}")
    for name, lo in rule.min_scores.items():
        if name in norm and norm[name] < lo:
            reasons.append(f"judge:{name}<{lo}")
    for name, present in answer.flags.items():
        if present and ("*" in rule.drop_on_flags or name in rule.drop_on_flags):
            reasons.append(f"judge_flag:{name}")
    return not reasons, round(overall, 4), reasons
