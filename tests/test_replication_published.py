"""docs/replication/: the committed generations give back the committed table.

Language correctness, code-switching and spelling are recomputed from `generations.parquet` with the real
fastText / Hunspell scorer (evalsuite.surface), tabulated by study.replicate.table, and compared with
`table.csv` as committed; the published scores must equal the recomputed ones row by row.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from evalsuite.surface import SurfaceScorer
from records.files import read_table
from study import replicate

PUBLISHED = Path(__file__).resolve().parent.parent / "docs" / "replication"


def test_published_replication_recomputes():
    if not (PUBLISHED / "generations.parquet").exists():
        pytest.fail(f"{PUBLISHED}/generations.parquet is missing: run python -m study.replicate --publish")
    gens = read_table(PUBLISHED / "generations.parquet").to_pylist()
    meta = {r["run"]: r for r in json.loads((PUBLISHED / "runs.json").read_text())}
    scorer = SurfaceScorer()
    rows = []
    for g in gens:
        s = scorer.score(lang=g["lang"], response=g["response"])
        rows.append({**g, **s, "lr": meta[g["run"]]["lr"], "kind": replicate.run_kind(meta[g["run"]])})
    published = {(r["run"], r["id"]): r for r in read_table(PUBLISHED / "scores.parquet").to_pylist()}
    assert len(published) == len(rows)
    for r in rows:
        p = published[(r["run"], r["id"])]
        assert p["lang_correct"] == r["lang_correct"] and p["lang_pred"] == r["lang_pred"], r["id"]
    entries = replicate.table(rows)
    with open(PUBLISHED / "table.csv", newline="") as f:
        committed = {(e["run"], e["lang"]): e for e in csv.DictReader(f)}
    assert set(committed) == {(e["run"], e["lang"]) for e in entries}
    for e in entries:
        c = committed[(e["run"], e["lang"])]
        assert int(c["n"]) == e["n"]
        for m in replicate.METRICS:
            for suffix in ("", "_lo", "_hi"):
                want, got = c[m + suffix], e[m + suffix]
                if want == "":
                    assert got is None
                else:
                    assert math.isclose(float(want), got, rel_tol=1e-5, abs_tol=1e-6), (
                        e["run"],
                        e["lang"],
                        m,
                    )
