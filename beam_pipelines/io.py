"""Shared Beam plumbing: validated Parquet reads, staged Parquet writes committed on success, options.

Output layout for `--output=PREFIX`: `PREFIX-SSSSS-of-NNNNN.parquet` shards (plus named side outputs such
as `PREFIX.deadletter-...parquet`) and a `PREFIX.SUCCESS` marker written last. A run writes its shards
under `PREFIX.tmp-<run id>/` and renames them into place only after the pipeline has succeeded, so a
failed or partial run never replaces a complete output; a complete output (marker present) is not
recomputed unless `--overwrite`. Every path goes through `FileSystems`, so gs:// and s3:// work too.
"""

from __future__ import annotations

import json
import posixpath
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Sequence

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from records.schemas import SchemaError, validate

SHARDS = "-SSSSS-of-NNNNN"


def match(pattern: str) -> list[str]:
    """Files matching a glob (any Beam filesystem); SchemaError-free FileNotFoundError if none."""
    found = sorted(m.path for r in FileSystems.match([pattern]) for m in r.metadata_list)
    if not found:
        raise FileNotFoundError(f"{pattern}: no file matches")
    return found


def file_schema(path: str) -> pa.Schema:
    with FileSystems.open(path) as f:
        try:
            return pq.read_schema(f)
        except (pa.ArrowInvalid, OSError) as e:
            raise SchemaError(f"{path}: not a readable Parquet file ({e})") from None


def check_files(pattern: str, schema: pa.Schema, required: Sequence[str] | None = None) -> pa.Schema:
    """Validates the footer of every matched file (error names file, column, type); returns the first
    file's schema (pass-through columns included)."""
    schemas = []
    for path in match(pattern):
        s = file_schema(path)
        validate(s.empty_table(), schema, path, required)
        schemas.append(s)
    return schemas[0]


def read_parquet(p: beam.Pipeline, label: str, pattern: str) -> beam.PCollection:
    return p | label >> beam.io.ReadFromParquet(pattern)


class Output:
    """One stage output: a staging folder per run, committed (renamed + marker) after success."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        self.staging = f"{prefix}.tmp-{self.run_id}"
        self.marker = f"{prefix}.SUCCESS"

    def complete(self) -> bool:
        return FileSystems.exists(self.marker)

    def skip(self, overwrite: bool) -> bool:
        """True (and says so) when a complete output exists and `overwrite` is not set."""
        if self.complete() and not overwrite:
            print(f"{self.prefix}: complete output exists ({self.marker}); --overwrite to recompute")
            return True
        return False

    def staged_prefix(self, name: str = "") -> str:
        return posixpath.join(self.staging, posixpath.basename(self.prefix) + name)

    def write(
        self, pcoll: beam.PCollection, label: str, schema: pa.Schema, name: str = "", num_shards: int = 0
    ) -> None:
        """Writes `pcoll` (dicts) as Parquet shards `PREFIX{name}-SSSSS-of-NNNNN.parquet` (staged)."""
        _ = pcoll | label >> beam.io.WriteToParquet(
            self.staged_prefix(name),
            schema,
            file_name_suffix=".parquet",
            shard_name_template=SHARDS,
            num_shards=num_shards,
        )

    def commit(self, summary: dict) -> list[str]:
        """Moves the staged files into place (old shards of this prefix removed) and writes the marker."""
        staged = [m.path for r in FileSystems.match([self.staging + "/*"]) for m in r.metadata_list]
        old = self._committed_files()
        if old:
            FileSystems.delete(old)
        dest_dir = posixpath.dirname(self.prefix)
        dests = [posixpath.join(dest_dir, posixpath.basename(s)) for s in staged]
        if staged:
            FileSystems.rename(staged, dests)
        FileSystems.delete([self.staging])
        with FileSystems.create(self.marker) as f:
            f.write(json.dumps({**summary, "files": sorted(dests)}, sort_keys=True).encode())
        return sorted(dests)

    def _committed_files(self) -> list[str]:
        """The files the previous complete run listed in its marker (only those are replaced)."""
        if not FileSystems.exists(self.marker):
            return []
        with FileSystems.open(self.marker) as f:
            listed = json.loads(f.read().decode("utf-8")).get("files", [])
        return [p for p in listed if FileSystems.exists(p)] + [self.marker]

    def abandon(self) -> None:
        if FileSystems.exists(self.staging):
            FileSystems.delete([self.staging])


def read_outputs(prefix: str, name: str = "") -> pa.Table:
    """All shards of a committed output as one table (for tests and small jobs)."""
    paths = [p for p in match(f"{prefix}{name}-*-of-*.parquet") if "-of-" in posixpath.basename(p)]
    tables = []
    for p in paths:
        with FileSystems.open(p) as f:
            tables.append(pq.read_table(f))
    return pa.concat_tables(tables, promote_options="permissive")


def pipeline_options(beam_args: Iterable[str]) -> PipelineOptions:
    """Standard Beam flags (runner, direct_running_mode, direct_num_workers, Dataflow ...) pass through."""
    opts = PipelineOptions(list(beam_args))
    opts.view_as(beam.options.pipeline_options.SetupOptions).save_main_session = False
    return opts


def metric_totals(result: beam.runners.runner.PipelineResult, namespace: str) -> dict[str, int]:
    """Committed (or attempted, where the runner has no committed values) counter totals."""
    from apache_beam.metrics.metric import MetricsFilter

    totals: dict[str, int] = {}
    for c in result.metrics().query(MetricsFilter().with_namespace(namespace))["counters"]:
        value = c.committed if c.committed is not None else c.attempted
        totals[c.key.metric.name] = totals.get(c.key.metric.name, 0) + int(value or 0)
    return totals


def run_and_commit(
    p: beam.Pipeline, out: Output, namespace: str, t0: float, counters: Sequence[str] = ()
) -> dict:
    """Runs the pipeline; on success commits `out` and returns the summary, on failure abandons it."""
    try:
        result = p.run()
        result.wait_until_finish()
    except BaseException:
        out.abandon()
        raise
    totals = {k: 0 for k in counters} | metric_totals(result, namespace)
    summary = {"counters": totals, "seconds": round(time.perf_counter() - t0, 2)}
    summary["files"] = out.commit(summary)
    return summary


def cli_main(run: Callable[[list[str]], dict]) -> None:
    """Entry point shared by the pipelines: bad input exits 2 with the message; the summary is printed as JSON."""
    try:
        summary = run(sys.argv[1:])
    except (SchemaError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(summary))
