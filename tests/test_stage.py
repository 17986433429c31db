"""Pieces the Ray Data jobs share (no Ray needed)."""

from sama.pipelines.stage import count_table


def test_count_table_rows_reasons_notes_and_totals():
    summary = {
        "reco": {"kept": 3, "rejected": 1, "reasons": {"missing_file": 1}, "mb": 1.25},
        "x2edit": {"kept": 5, "rejected": 0, "reasons": {}, "mb": 2.0},
    }
    text = count_table(
        summary,
        {"kept": lambda s: s["kept"], "rejected": lambda s: s["rejected"], "MB": lambda s: s["mb"]},
        note=lambda s: "  (late)" if s["rejected"] else "",
    )
    header, reco, x2, total = text.splitlines()
    assert header.split() == ["dataset", "kept", "rejected", "MB", "reasons"]
    assert reco.split() == ["reco", "3", "1", "1.2", "missing_file=1", "(late)"]
    assert x2.split() == ["x2edit", "5", "0", "2.0", "-"]
    assert total.split() == ["total", "8", "1", "3.2"]
    assert header.index("reasons") == reco.index("missing_file") == x2.index("-")  # columns line up
    assert len(count_table(summary, {"kept": lambda s: s["kept"]}, total=False).splitlines()) == 3


# --- a toy job on the stage runner: all it writes is what it is about ---------------------------------

import inspect  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

import pyarrow as pa  # noqa: E402
import pytest  # noqa: E402

from sama import storage  # noqa: E402
from sama.pipelines.stage import Part, Stage, Table, dry_run_stage, run_stage  # noqa: E402
from sama.schemas import TableSchema  # noqa: E402

SQUARES = TableSchema(
    "squares",
    1,
    pa.schema(
        [
            ("dataset", pa.string()),
            ("n", pa.int64()),
            ("square", pa.int64()),
            ("status", pa.string()),
            ("reason", pa.string()),
        ]
    ),
)


class Squares(Stage):
    """Squares of the numbers in a text file, ``per_part`` numbers a part; a negative number
    fails (a row with a reason), a number over ``limit`` is an error (redone next run)."""

    name = "squares"
    tables = {
        "squares": Table(
            SQUARES,
            "squares",
            status_column="status",
            statuses=("ok", "failed", "error"),
            reason_column="reason",
            ok=("ok",),
            errors=("error",),
            totals=("square",),
        )
    }

    def __init__(self, source: str, output: str, per_part: int = 2, limit: int = 100, offset: int = 0):
        super().__init__(output)
        self.source, self.per_part, self.limit, self.offset = source, per_part, limit, offset

    def plan(self) -> list[Part]:
        numbers = [int(x) for x in open(self.source).read().split()]
        chunks = [numbers[i : i + self.per_part] for i in range(0, len(numbers), self.per_part)]
        return [Part(f"toy/{storage.content_digest(*map(str, c), n=8)}", c) for c in chunks]  # named by content

    def digest(self) -> str:
        return str(self.offset)

    def process(self, part: Part) -> dict:
        rows = []
        for n in part.spec:
            status, reason = (
                ("failed", "negative") if n < 0 else ("error", "too_big") if n > self.limit else ("ok", None)
            )
            rows.append({"dataset": "toy", "n": n, "square": n * n + self.offset, "status": status, "reason": reason})
        return {"squares": rows, "stats": {"numbers": len(rows)}}


def test_a_toy_job_gets_resume_summary_and_dry_run_from_the_runner(ray_cluster, tmp_path):
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import a test module
    assert len(inspect.getsource(Squares).splitlines()) < 40  # the whole job
    source, out = tmp_path / "numbers.txt", str(tmp_path / "out")
    source.write_text("1 2 3 -4 5")
    s = run_stage(Squares(str(source), out)).summary
    assert (s["parts"], s["parts_run"], s["numbers"]) == (3, 3, 5)
    assert s["datasets"]["toy"] == {"ok": 4, "failed": 1, "error": 0, "square": 55, "reasons": {"negative": 1}}
    assert json.loads(storage.read_text(os.path.join(out, "summary.json")))["datasets"] == s["datasets"]
    table = storage.read_parquet(os.path.join(out, "squares"))
    assert sorted(table["n"].to_pylist()) == [-4, 1, 2, 3, 5]

    again = run_stage(Squares(str(source), out)).summary  # resume: nothing left to do, nothing duplicated
    assert again["parts_run"] == 0 and again["datasets"] == s["datasets"] and "numbers" not in again
    assert storage.read_parquet(os.path.join(out, "squares")).num_rows == 5
    assert (
        dry_run_stage(Squares(str(source), out))[0]
        == "squares: 3 part(s) planned, 3 finished, 0 to run; 0 stale output(s) to remove"
    )

    done = os.path.join(out, "_work", "done", "squares", "toy")
    os.remove(os.path.join(done, sorted(os.listdir(done))[0]))  # killed before its marker was written
    assert run_stage(Squares(str(source), out)).summary["parts_run"] == 1

    source.write_text("1 2 3 500")  # the input changed: two parts are gone, a new one holds an error
    s = run_stage(Squares(str(source), out)).summary
    assert len(os.listdir(os.path.join(out, "squares", "toy"))) == len(os.listdir(done)) == 2
    assert s["datasets"]["toy"]["error"] == 1 and s["parts_run"] == 1 and s["parts"] == 2
    assert run_stage(Squares(str(source), out)).summary["parts_run"] == 1  # errors are retried...
    assert run_stage(Squares(str(source), out, limit=1000)).summary["datasets"]["toy"]["ok"] == 4  # ...until decided
    assert run_stage(Squares(str(source), out, offset=1)).summary["parts_run"] == 2  # what decides changed: all redone

    source.write_text("7 7")
    with pytest.raises(ValueError, match="both named"):
        run_stage(Squares(str(source), out, per_part=1))
