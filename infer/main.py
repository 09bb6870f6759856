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

import dataclasses

from absl import app, flags

from infer.decode import DecodeKernels
from infer.generate_file import GenerateOptions, generate_file
from records.cli import expected_errors

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
flags.DEFINE_enum_class(
    "kernels",
    DecodeKernels.AUTO,
    DecodeKernels,
    "Decode kernels: native (models/cpu_kernels.py; float32 on one CPU device), xla (XLA's), or auto "
    "(native where they apply); the `decoding` column records which ran.",
)
flags.DEFINE_integer("mesh_tensor", 1, "Devices on the tensor axis (heads, MLP, vocab); -1 = remaining.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    opts = GenerateOptions(**{f.name: FLAGS[f.name].value for f in dataclasses.fields(GenerateOptions)})
    opts.stop = tuple(opts.stop)
    table = generate_file(opts)
    print(f"wrote {opts.output} ({table.num_rows} rows)")


if __name__ == "__main__":
    app.run(expected_errors(main))
