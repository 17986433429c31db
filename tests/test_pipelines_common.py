"""Pieces the Ray Data jobs share (no Ray needed)."""

from sama.pipelines.common import count_table


def test_count_table_rows_reasons_notes_and_totals():
    summary = {"reco": {"kept": 3, "rejected": 1, "reasons": {"missing_file": 1}, "mb": 1.25},
               "x2edit": {"kept": 5, "rejected": 0, "reasons": {}, "mb": 2.0}}
    text = count_table(summary, {"kept": lambda s: s["kept"], "rejected": lambda s: s["rejected"],
                                 "MB": lambda s: s["mb"]}, note=lambda s: "  (late)" if s["rejected"] else "")
    header, reco, x2, total = text.splitlines()
    assert header.split() == ["dataset", "kept", "rejected", "MB", "reasons"]
    assert reco.split() == ["reco", "3", "1", "1.2", "missing_file=1", "(late)"]
    assert x2.split() == ["x2edit", "5", "0", "2.0", "-"]
    assert total.split() == ["total", "8", "1", "3.2"]
    assert header.index("reasons") == reco.index("missing_file") == x2.index("-")  # columns line up
    assert len(count_table(summary, {"kept": lambda s: s["kept"]}, total=False).splitlines()) == 3
