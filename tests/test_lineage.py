"""Provenance without Ray: licenses and their policy, lineage over job records, model cards."""

from __future__ import annotations

import json
import os

from sama import storage
from sama.lineage import add_evaluation, format_tree, raw_inputs, read_card, walk, write_card
from sama.provenance import LICENSES, LicenseConfig, input_digest, record


def test_license_table_overrides_and_policy():
    assert LICENSES["pico_banana"].id == "CC-BY-NC-ND-4.0" and "Pico-Banana-400K" in LICENSES["pico_banana"].source
    policy = LicenseConfig(overrides={"koala36m": "negotiated-1"}, deny=["*-ND*"])
    assert policy.license_of("koala36m").id == "negotiated-1"
    assert policy.license_of("koala36m").source.startswith("config")
    assert policy.license_of("nobody").id == "unknown"
    assert "matches ingest.licenses.deny '*-ND*'" in policy.excluded("CC-BY-NC-ND-4.0")
    assert policy.excluded("CC-BY-4.0") is None
    only_open = LicenseConfig(allow=["Apache-2.0", "CC-BY-4.0"])
    assert only_open.excluded("CC-BY-NC-SA-4.0") and only_open.excluded("Apache-2.0") is None


def test_input_digests_follow_content(tmp_path):
    folder = tmp_path / "manifest"
    folder.mkdir()
    (folder / "a.parquet").write_bytes(b"1")
    first = input_digest(str(folder))
    assert first == input_digest(str(folder)) and input_digest(str(tmp_path / "nope")) == "missing"
    (folder / "b.parquet").write_bytes(b"2")
    assert input_digest(str(folder)) != first


def _job(folder, job: str, inputs: list[str], **facts) -> str:
    os.makedirs(folder, exist_ok=True)
    storage.write_text(
        os.path.join(folder, "summary.json"), json.dumps({"provenance": record(job, f"d-{job}", inputs, **facts)})
    )
    return str(folder)


def test_lineage_walks_from_a_model_to_the_raw_data(tmp_path):
    raw = tmp_path / "data" / "reco"
    raw.mkdir(parents=True)
    (raw / "x.json").write_text("{}")
    ingest = _job(tmp_path / "ingest", "probe", [str(raw)])
    filt = _job(tmp_path / "filter", "filter", [f"{ingest}/manifest"], judge_model="none:cheap-checks-only")
    pre = _job(tmp_path / "pre", "precompute", [f"{filt}/manifest"])
    s0 = _job(tmp_path / "train0", "train", [f"{pre}/latents"], stage=0)
    export = tmp_path / "train1" / "export"
    write_card(
        str(export), {"title": "t", "data": [], "provenance": record("train", "d1", [f"{pre}/latents", f"{s0}/stage0"])}
    )

    tree = walk(str(export))
    text = format_tree(tree)
    assert [line.strip().split(":")[0] for line in text.splitlines()][:5] == [
        "train",
        "precompute",
        "filter",
        "probe",
        "raw data",
    ]
    assert "judge_model=none:cheap-checks-only" in text and "[see above]" in text  # precompute reached twice
    assert raw_inputs(tree) == [str(raw)]
    assert walk(str(raw)) == {"uri": str(raw), "raw": True}


def test_model_cards_render_and_collect_evaluations(tmp_path):
    folder = str(tmp_path / "export")
    card = {
        "title": "SAMA stage 1",
        "base_model": "tiny",
        "stage": 1,
        "steps": 4,
        "data": [
            {"source": "v", "dataset": "reco", "samples": 12, "license": "CC-BY-NC-SA-4.0", "filter": None},
            {"source": "i", "dataset": "nhr_edit", "samples": 3, "license": "Apache-2.0", "filter": None},
        ],
        "evaluations": [],
    }
    write_card(folder, card)
    readme = open(os.path.join(folder, "README.md")).read()
    assert readme.startswith("---\nlibrary_name: diffusers") and "| v | reco | 12 | CC-BY-NC-SA-4.0 | none |" in readme
    assert "datasets_licenses: [Apache-2.0, CC-BY-NC-SA-4.0]" in readme
    assert add_evaluation(folder, {"benchmark": "user", "output": "/o", "metrics": {"gt_psnr": 21.5}})
    assert add_evaluation(folder, {"benchmark": "user", "output": "/o", "metrics": {"gt_psnr": 22.0}})  # replaced
    assert read_card(folder)["evaluations"] == [{"benchmark": "user", "output": "/o", "metrics": {"gt_psnr": 22.0}}]
    assert "| gt_psnr | 22.0 |" in open(os.path.join(folder, "README.md")).read()
    assert not add_evaluation(str(tmp_path / "no-card"), {"output": "/o"})

    from sama.serve.config import model_facts

    facts = model_facts(folder)
    assert facts["card"]["licenses"] == ["Apache-2.0", "CC-BY-NC-SA-4.0"]
    assert facts["card"]["data"][0] == {"source": "v", "dataset": "reco", "samples": 12, "license": "CC-BY-NC-SA-4.0"}
    assert facts["card"]["evaluations"][0]["metrics"] == {"gt_psnr": 22.0}
    assert model_facts(str(tmp_path / "no-card"))["card"] is None
