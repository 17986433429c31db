"""Lineage: from any output folder or checkpoint back to the raw datasets, and model cards.

Every job output records a ``provenance`` block (``sama.provenance.record``) in its
``summary.json``; an exported model records one in ``model_card.json``. An input URI
that lies inside another job's output (a ``manifest/`` folder, a ``latents/`` folder, a
checkpoint) leads to that output's record, and so on down to inputs no job wrote: the
raw datasets. ``sama lineage PATH`` prints that chain.

A model card (``README.md`` + ``model_card.json`` in a diffusers folder) says what went
into the weights: base model, stage, steps, the data mix per dataset with sample counts
and licenses (read back through the lineage to the manifest that ingest stamped), the
filter and judge that chose the data, and evaluation results once an evaluation ran.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from typing import Any, Optional

from sama import storage

RECORDS = ("summary.json", "model_card.json")
MAX_UP = 3  # an input like <output>/manifest/<dataset> is this many folders below its record


def find_record(uri: str) -> Optional[tuple[str, dict[str, Any]]]:
    """(folder, record) of the job output holding ``uri``, if any holds a provenance block."""
    here = uri.rstrip("/")
    for _ in range(MAX_UP + 1):
        for name in RECORDS:
            path = storage.join(here, name)
            try:
                data = json.loads(storage.read_text(path))
            except (FileNotFoundError, ValueError, OSError, storage.StorageError):  # not a folder, unreadable
                continue
            prov = data.get("provenance")
            if isinstance(prov, dict):
                return here, data
        parent = storage.parent(here)
        if not parent or parent == here or parent.rstrip("/") in ("", "s3:", "/"):
            break
        here = parent
    return None


def walk(uri: str, _seen: Optional[set[str]] = None) -> dict[str, Any]:
    """The lineage tree of ``uri``: {uri, job, folder, config_digest, code_version, inputs: [...]}
    for job outputs; {uri, raw: True} for what no job wrote."""
    seen = _seen if _seen is not None else set()
    found = find_record(uri)
    if found is None:
        return {"uri": uri, "raw": True}
    folder, data = found
    prov = data["provenance"]
    node = {
        "uri": uri,
        "folder": folder,
        "job": prov.get("job"),
        "config_digest": prov.get("config_digest"),
        "code_version": prov.get("code_version"),
        "facts": {k: v for k, v in prov.items() if k not in ("job", "config_digest", "code_version", "inputs")},
        "inputs": [],
    }
    if folder in seen:
        node["repeat"] = True
        return node
    seen.add(folder)
    for inp in prov.get("inputs", []):
        child = walk(inp["uri"], seen)
        child["digest"] = inp.get("digest")
        node["inputs"].append(child)
    return node


def format_tree(node: dict[str, Any], indent: str = "") -> str:
    if node.get("raw"):
        line = f"{indent}raw data: {node['uri']}" + (f"  (digest {node['digest']})" if node.get("digest") else "")
        return line + "\n"
    facts = ", ".join(f"{k}={v}" for k, v in node["facts"].items() if not isinstance(v, (dict, list)) or v)
    out = (
        f"{indent}{node['job']}: {node['folder']}  (config {node['config_digest']}, code {node['code_version']}"
        + (f", {facts}" if facts else "")
        + ")\n"
    )
    if node.get("repeat"):
        return out.rstrip("\n") + "  [see above]\n"
    for child in node["inputs"]:
        out += format_tree(child, indent + "  ")
    return out


def jobs_in(node: dict[str, Any]) -> Iterable[dict[str, Any]]:
    if not node.get("raw"):
        yield node
        for child in node.get("inputs", []):
            yield from jobs_in(child)


def raw_inputs(node: dict[str, Any]) -> list[str]:
    if node.get("raw"):
        return [node["uri"]]
    return [u for child in node.get("inputs", []) for u in raw_inputs(child)]


# --- what a model was trained on --------------------------------------------------------------


def _manifest_licenses(node: dict[str, Any]) -> dict[str, str]:
    """dataset -> license, from the first manifest (with a license column) up the lineage."""
    for job in jobs_in(node):
        for inp in job["inputs"]:
            try:
                t = storage.read_parquet(inp["uri"], columns=["dataset", "license"])
            except (FileNotFoundError, KeyError, ValueError, OSError):
                continue
            pairs = zip(t.column("dataset").to_pylist(), t.column("license").to_pylist())
            return {d: lic for d, lic in pairs if lic}
    return {}


def data_mix(sources: Iterable[Any]) -> list[dict[str, Any]]:
    """Per training source (``SourceConfig``) and dataset: samples in its latents for its tasks,
    the dataset's license, and the filter that chose them."""
    from sama.provenance import LicenseConfig

    out = []
    for src in sources:
        try:
            t = storage.read_parquet(src.uri, columns=["dataset", "task"])
        except (FileNotFoundError, OSError) as e:
            out.append({"source": src.name, "uri": src.uri, "error": f"{type(e).__name__}: {e}"})
            continue
        counts = Counter(
            d for d, task in zip(t.column("dataset").to_pylist(), t.column("task").to_pylist()) if task in src.tasks
        )
        tree = walk(src.uri)
        licenses = _manifest_licenses(tree)
        filters = [j for j in jobs_in(tree) if j["job"] == "filter"]
        for dataset, n in sorted(counts.items()):
            lic = licenses.get(dataset)
            out.append(
                {
                    "source": src.name,
                    "uri": src.uri,
                    "tasks": list(src.tasks),
                    "weight": src.weight,
                    "dataset": dataset,
                    "samples": n,
                    "license": lic or LicenseConfig().license_of(dataset).id,
                    "license_from": "manifest" if lic else "sama.provenance.LICENSES (no manifest found)",
                    "filter": (
                        {
                            "judge_model": filters[0]["facts"].get("judge_model"),
                            "rubric_versions": filters[0]["facts"].get("rubric_versions"),
                            "config_digest": filters[0]["config_digest"],
                        }
                        if filters
                        else None
                    ),
                }
            )
    return out


# --- model cards ---------------------------------------------------------------------------------


def read_card(folder: str) -> Optional[dict[str, Any]]:
    try:
        return json.loads(storage.read_text(storage.join(folder, "model_card.json")))
    except (FileNotFoundError, ValueError, OSError, storage.StorageError):
        return None


def write_card(folder: str, card: dict[str, Any]) -> None:
    """``model_card.json`` (for machines: serving, lineage) and ``README.md`` (the Hub's card)."""
    storage.write_text(storage.join(folder, "model_card.json"), json.dumps(card, indent=2, default=str))
    storage.write_text(storage.join(folder, "README.md"), render_card(card))


def render_card(card: dict[str, Any]) -> str:
    licenses = sorted({d["license"] for d in card.get("data", []) if d.get("license")})
    lines = [
        "---",
        "library_name: diffusers",
        f"base_model: {card.get('base_model')}",
        "tags: [video-editing, sama, wan]",
        f"datasets_licenses: [{', '.join(licenses)}]",
        "---",
        "",
        f"# {card.get('title', 'SAMA video editor')}",
        "",
        card.get("summary", ""),
        "",
        "| fact | value |",
        "|---|---|",
    ]
    for key in ("base_model", "init_from", "stage", "steps", "seed", "code_version", "checkpoint"):
        if card.get(key) is not None:
            lines.append(f"| {key} | `{card[key]}` |")
    if card.get("data"):
        lines += [
            "",
            "## Training data",
            "",
            "| source | dataset | samples | license | filter (judge, rubrics, config) |",
            "|---|---|---|---|---|",
        ]
        for d in card["data"]:
            f = d.get("filter") or {}
            filt = (
                f"{f.get('judge_model')}, {', '.join(f.get('rubric_versions') or [])}, {f.get('config_digest')}"
                if f
                else "none"
            )
            lines.append(
                f"| {d['source']} | {d.get('dataset', '?')} | {d.get('samples', 0)} | {d.get('license')} | {filt} |"
            )
        lines += ["", "Every license above applies to the data; check each before using this model."]
    for ev in card.get("evaluations", []):
        lines += [
            "",
            f"## Evaluation: {ev.get('benchmark')} ({ev.get('output')})",
            "",
            "| metric | value |",
            "|---|---|",
        ]
        lines += [f"| {k} | {v} |" for k, v in ev.get("metrics", {}).items()]
    if card.get("conversion"):
        lines += ["", "## Conversion", "", "```json", json.dumps(card["conversion"], indent=2, default=str), "```"]
    lines += ["", "Lineage: `sama lineage <this folder>`.", ""]
    return "\n".join(lines)


def add_evaluation(folder: str, evaluation: dict[str, Any]) -> bool:
    """Append (or replace, by output) an evaluation to the card in ``folder``; False without a card."""
    card = read_card(folder)
    if card is None:
        return False
    evals = [e for e in card.get("evaluations", []) if e.get("output") != evaluation.get("output")]
    card["evaluations"] = [*evals, evaluation]
    write_card(folder, card)
    return True
