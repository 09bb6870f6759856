"""The fp32 matmul ceiling of this machine, measured in the same run as a benchmark (machines of the same
kind differ up to 3x, and load changes them further, so a figure is only read against its own ceiling).

`xla_matmul_gflops(m, k, n)`: jitted XLA `[m,k] @ [k,n]` chained `repeats` times in one call (no dispatch
overhead in the figure); `torch_matmul_gflops(m, k, n)`: `torch.mm` into a preallocated output, same shapes
and repeats, with torch's current thread count. Both return GFLOP/s (2·m·k·n per product), the median of 5.

`xla_stream_gbs(mib)`: jitted XLA sum over a float32 array of `mib` MiB (far larger than the caches), GB/s
read from memory, the best of 7 (a capacity: on a shared VM the figure moved between 29 and 54 GB/s within
minutes): the ceiling of a step that must stream its weights (decoding a few rows reads every weight once
per step, so it is bound by this, not by the in-cache matmul rate above).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def _call_times(call: Callable[[], object], runs: int) -> list[float]:
    """Wall seconds of `runs` calls of `call` (each must block until its work is done), after one warm-up."""
    call()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return times


def xla_matmul_gflops(m: int, k: int, n: int, repeats: int = 100) -> float:
    import jax
    import jax.numpy as jnp

    x = jnp.ones((m, k), jnp.float32)
    w = jnp.ones((k, n), jnp.float32) * 1e-3
    # each product's output feeds the next (cut back to [m, k]) so XLA cannot hoist or drop any of them
    f = jax.jit(lambda x, w: jax.lax.fori_loop(0, repeats, lambda i, y: x + (y @ w)[:, :k], x))
    times = _call_times(lambda: f(x, w).block_until_ready(), 5)
    return 2 * m * k * n * repeats / statistics.median(times) / 1e9


def torch_matmul_gflops(m: int, k: int, n: int, repeats: int = 100) -> float:
    import torch

    x = torch.ones(m, k)
    w = torch.ones(k, n) * 1e-3
    out = torch.empty(m, n)

    def products() -> None:
        for _ in range(repeats):
            torch.mm(x, w, out=out)

    times = _call_times(products, 5)
    return 2 * m * k * n * repeats / statistics.median(times) / 1e9


def xla_stream_gbs(mib: int = 512) -> float:
    import jax
    import jax.numpy as jnp

    a = jnp.ones((mib * 2**20 // 4,), jnp.float32)
    f = jax.jit(jnp.sum)
    return a.nbytes / min(_call_times(lambda: f(a).block_until_ready(), 7)) / 1e9
