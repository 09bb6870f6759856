"""Generation CLI: answer every prompt of a JSONL/Parquet file with a model, resumably.

  python -m infer.main --model=DIR --input=data/eval/alpacaeval_test_subset.en.jsonl --output=gen.parquet \
      [--max_new_tokens=512 --repetition_penalty=1.1 --batch_size=16 --template=model]

`--model` is an HF directory, a training workdir (its export/), a .gguf or "embedded". Rerunning skips ids
already answered; see infer/records.py for the file layout.

For a training workdir (or its export/), the decoding settings default to the run's protocol, read from the
workdir's config.json (`decode` and `model.chat_template` / `model.dtype`: released 1.2, `:paper` 1.1), so a
model is decoded the way its recipe says unless a flag is given explicitly. Elsewhere the defaults are the
released protocol's (512 new tokens, penalty 1.2), the model's own template and float32. The settings used are
logged and stored in the `decoding` column.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from absl import app, flags, logging

from infer.decode import DecodeParams
from infer.records import ResumableOutput, read_prompts
from infer.run_settings import fill_unset
from records.files import RecordError, atomic_write_text

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "model", None, "HF directory, training workdir, .gguf file, or 'embedded'.", required=True
)
flags.DEFINE_string("input", None, "JSONL or Parquet with chat messages per row.", required=True)
flags.DEFINE_string(
    "output", None, "Output Parquet (GENERATION_SCHEMA + pass-through columns).", required=True
)
flags.DEFINE_integer(
    "max_new_tokens", None, "Token budget per response (default: the run's protocol, or 512)."
)
flags.DEFINE_float(
    "repetition_penalty", None, "HF repetition penalty, 1.0 = off (default: the run's protocol, or 1.2)."
)
flags.DEFINE_float("temperature", 0.0, "0 = greedy.")
flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass (with temperature > 0).")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_multi_string("stop", [], "Stop string (repeatable).")
flags.DEFINE_integer("batch_size", 16, "Rows decoded together.")
flags.DEFINE_integer("chunk_size", 0, "Rows per resumable part (default: 2 * batch_size).")
flags.DEFINE_string(
    "template", None, "Chat template: model (the checkpoint's), llama-2, or Jinja text (default: the run's)."
)
flags.DEFINE_string(
    "dtype", None, "Compute/storage dtype, float32 or bfloat16 (default: the run's, or float32)."
)
flags.DEFINE_string("model_name", None, "Value of the `model` column (default: the model directory name).")
flags.DEFINE_bool("skip_bad", False, "Skip unreadable input lines, listing them in <output>.bad.txt.")
flags.DEFINE_integer("limit", 0, "Answer only the first N rows (0 = all).")
flags.DEFINE_integer("mesh_data", 1, "Devices on the mesh's data axis (batch); -1 = all remaining devices.")
flags.DEFINE_integer("mesh_fsdp", 1, "Devices on the fsdp axis (weights' embed dim, batch); -1 = remaining.")
flags.DEFINE_integer("mesh_tensor", 1, "Devices on the tensor axis (heads, MLP, vocab); -1 = remaining.")


def run(argv_unused: list[str]) -> int:
    from tqdm import tqdm

    from infer.engine import Engine
    from models.sharding import make_mesh

    output = Path(FLAGS.output)
    try:
        source = fill_unset(FLAGS)
        logging.info(
            "decoding: max_new_tokens=%s repetition_penalty=%s template=%s dtype=%s from %s",
            FLAGS.max_new_tokens, FLAGS.repetition_penalty, FLAGS.template, FLAGS.dtype, source,
        )  # fmt: skip
        rows, bad = read_prompts(FLAGS.input, skip_bad=FLAGS.skip_bad)
        params = DecodeParams.from_options(FLAGS)
        sizes = (FLAGS.mesh_data, FLAGS.mesh_fsdp, FLAGS.mesh_tensor)
        mesh = None if sizes == (1, 1, 1) else make_mesh(*sizes)
    except (RecordError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if bad:
        side = output.with_name(output.name + ".bad.txt")
        atomic_write_text("".join(b + "\n" for b in bad), side)
        logging.warning("%d bad input lines skipped, listed in %s", len(bad), side)
    if FLAGS.limit:
        rows = rows[: FLAGS.limit]
    out = ResumableOutput(output)
    done = out.done_ids()
    todo = [r for r in rows if r["id"] not in done]
    logging.info("%d rows, %d already answered, %d to go", len(rows), len(rows) - len(todo), len(todo))
    if todo:
        engine = Engine.from_path(
            FLAGS.model, dtype=FLAGS.dtype, template=FLAGS.template, max_batch=FLAGS.batch_size, mesh=mesh
        )
        model_name = FLAGS.model_name or engine.name
        decoding = json.loads(params.to_json())
        decoding.update(template=FLAGS.template, dtype=FLAGS.dtype)
        decoding_json = json.dumps(decoding, sort_keys=True)
        ids, errors = [], {}
        for i, r in enumerate(todo):
            try:
                ids.append(engine.encode(r["messages"]))
            except Exception as e:  # a template that cannot render this conversation: record, go on
                ids.append(None)
                errors[i] = f"cannot encode prompt: {e}"
        order = sorted(range(len(todo)), key=lambda i: len(ids[i] or []))  # similar lengths batch together
        chunk = FLAGS.chunk_size or 2 * FLAGS.batch_size
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
    table = out.finalize([r["id"] for r in rows])
    print(f"wrote {output} ({table.num_rows} rows)")
    return 0


def main() -> None:
    app.run(lambda argv: sys.exit(run(argv)))


if __name__ == "__main__":
    main()
