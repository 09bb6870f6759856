"""Serve one model over the OpenAI-compatible API of `infer.server` (FastAPI on uvicorn).

  python -m infer.serve --model=DIR [--host=127.0.0.1 --port=8000 --api_key=KEY --max_batch=16
                                [--batching=continuous|static]]

Prints `xlit infer server: model 'ID' on http://HOST:PORT/v1` once the port is bound (with --port=0 the port
is the one the system chose; study/judge_server.py reads it from this line).
"""

from __future__ import annotations

import uvicorn
from absl import app, flags

from infer.engine import Engine
from infer.server import bind, make_app

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "embedded", "HF directory, training workdir, .gguf, or 'embedded'.")
flags.DEFINE_string("served_model_name", None, "Model id clients use (default: the model directory name).")
flags.DEFINE_string("host", "127.0.0.1", "Bind address.")
flags.DEFINE_integer("port", 8000, "Port (0 = any free port; the chosen one is printed).")
flags.DEFINE_string("api_key", None, "If set, requests need `Authorization: Bearer <key>`.")
flags.DEFINE_integer("max_batch", 16, "Most requests decoded together (decode slots, continuous batching).")
flags.DEFINE_enum(
    "batching",
    "continuous",
    ["continuous", "static"],
    "continuous: requests enter free decode slots as they arrive; static: batches gathered over batch_wait_ms.",
)
flags.DEFINE_integer(
    "batch_wait_ms", 10, "Static batching: how long to wait for more requests after the first."
)
flags.DEFINE_integer(
    "slot_cache_len", 2048, "Continuous batching: KV-cache entries per slot (longer requests decode alone)."
)
flags.DEFINE_integer("max_tokens_default", 512, "max_tokens when a request gives none.")
flags.DEFINE_string("template", "model", "Chat template: model, llama-2, or Jinja text.")
flags.DEFINE_string("dtype", "float32", "Compute dtype.")
flags.DEFINE_integer("mesh_data", 1, "Devices on the mesh's data axis (batch); -1 = all remaining devices.")
flags.DEFINE_integer("mesh_fsdp", 1, "Devices on the fsdp axis (weights' embed dim, batch); -1 = remaining.")
flags.DEFINE_integer("mesh_tensor", 1, "Devices on the tensor axis (heads, MLP, vocab); -1 = remaining.")


def run(argv_unused: list[str]) -> None:
    from models.sharding import make_mesh

    sizes = (FLAGS.mesh_data, FLAGS.mesh_fsdp, FLAGS.mesh_tensor)
    mesh = None if sizes == (1, 1, 1) else make_mesh(*sizes)  # weights streamed onto it, KV cache sharded
    engine = Engine.from_path(
        FLAGS.model, dtype=FLAGS.dtype, template=FLAGS.template, max_batch=FLAGS.max_batch, mesh=mesh
    )
    api = make_app(
        engine,
        api_key=FLAGS.api_key,
        served_model_name=FLAGS.served_model_name,
        max_batch=FLAGS.max_batch,
        batch_wait_ms=FLAGS.batch_wait_ms,
        batching=FLAGS.batching,
        slot_cache_len=FLAGS.slot_cache_len,
        max_tokens_default=FLAGS.max_tokens_default,
    )
    sock = bind(FLAGS.host, FLAGS.port)
    host, port = sock.getsockname()[:2]
    print(f"xlit infer server: model {api.state.model_id!r} on http://{host}:{port}/v1", flush=True)
    config = uvicorn.Config(api, timeout_graceful_shutdown=5, lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])


def main() -> None:
    app.run(run)


if __name__ == "__main__":
    main()
