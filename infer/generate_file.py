"""Generating a file of answers: every prompt of a JSONL/Parquet file answered by a model, resumably
(`python -m infer.main` is the CLI; the options and their meaning are its flags').

For a training workdir (or its export/), the decoding settings left unset (None) default to the run's protocol
(infer/run_settings.py). Rerunning skips ids already answered; see infer/records.py for the file layout.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pyarrow as pa
from absl import logging

from infer.decode import DecodeKernels, DecodeParams
from infer.records import ResumableOutput, read_prompts
from infer.run_settings import fill_unset
from records.errors import InputError
from records.files import atomic_write_text


@dataclasses.dataclass
class GenerateOptions:
    """What `python -m infer.main` takes (same names as its flags; None = the run's protocol)."""

    model: str
    input: str
    output: str
    max_new_tokens: int | None = None
    repetition_penalty: float | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()
    batch_size: int = 16
    chunk_size: int = 0
    template: str | None = None
    dtype: str | None = None
    model_name: str | None = None
    skip_bad: bool = False
    limit: int = 0
    mesh_data: int = 1
    mesh_fsdp: int = 1
    mesh_tensor: int = 1
    kernels: DecodeKernels = DecodeKernels.AUTO


def generate_file(opts: GenerateOptions) -> pa.Table:
    """Answers every prompt of opts.input into opts.output (resumable); returns the final table.

    Expected failures (unreadable input, bad records, a run's unreadable decoding settings) raise InputError."""
    from tqdm import tqdm

    from infer.engine import Engine
    from models.sharding import make_mesh

    output = Path(opts.output)
    try:
        source = fill_unset(opts)
        logging.info(
            "decoding: max_new_tokens=%s repetition_penalty=%s template=%s dtype=%s from %s",
            opts.max_new_tokens, opts.repetition_penalty, opts.template, opts.dtype, source,
        )  # fmt: skip
        rows, bad = read_prompts(opts.input, skip_bad=opts.skip_bad)
        params = DecodeParams.from_options(opts)
        sizes = (opts.mesh_data, opts.mesh_fsdp, opts.mesh_tensor)
        mesh = None if sizes == (1, 1, 1) else make_mesh(*sizes)
    except ValueError as e:
        raise (e if isinstance(e, InputError) else InputError(str(e))) from None
    if bad:
        side = output.with_name(output.name + ".bad.txt")
        atomic_write_text("".join(b + "\n" for b in bad), side)
        logging.warning("%d bad input lines skipped, listed in %s", len(bad), side)
    if opts.limit:
        rows = rows[: opts.limit]
    out = ResumableOutput(output)
    done = out.done_ids()
    todo = [r for r in rows if r["id"] not in done]
    logging.info("%d rows, %d already answered, %d to go", len(rows), len(rows) - len(todo), len(todo))
    if todo:
        engine = Engine.from_path(
            opts.model,
            dtype=opts.dtype,
            template=opts.template,
            max_batch=opts.batch_size,
            mesh=mesh,
            kernels=opts.kernels,
        )
        model_name = opts.model_name or engine.name
        decoding = json.loads(params.to_json())
        decoding.update(template=opts.template, dtype=opts.dtype, kernels=engine.decoder.kernels.value)
        decoding_json = json.dumps(decoding, sort_keys=True)
        ids, errors = [], {}
        for i, r in enumerate(todo):
            try:
                ids.append(engine.encode(r["messages"]))
            except Exception as e:  # a template that cannot render this conversation: record, go on
                ids.append(None)
                errors[i] = f"cannot encode prompt: {e}"
        order = sorted(range(len(todo)), key=lambda i: len(ids[i] or []))  # similar lengths batch together
        chunk = opts.chunk_size or 2 * opts.batch_size
        start = time.time()
        with tqdm(total=len(todo), desc="generate", unit="row") as bar:
            for c in range(0, len(order), chunk):
                idx = order[c : c + chunk]
                results = engine.generate_ids(
                    [ids[i] for i in idx],
                    params,
                    errors={k: errors[i] for k, i in enumerate(idx) if i in errors},
                    progress=bar.update,
                )
                records = []
                for i, res in zip(idx, results, strict=True):
                    records.append(
                        {
                            **todo[i],
                            "response": res.text,
                            "prompt_tokens": res.prompt_tokens,
                            "response_tokens": res.response_tokens,
                            "finish_reason": res.finish_reason,
                            "model": model_name,
                            "decoding": decoding_json,
                            "error": res.error,
                        }
                    )
                out.append(records)
        logging.info("generated %d rows in %.1fs", len(todo), time.time() - start)
    return out.finalize([r["id"] for r in rows])
