"""The fp32 matmul ceiling of this machine, measured in the same run as a benchmark (machines of the same
kind differ up to 3x, and load changes them further, so a figure is only read against its own ceiling).

`xla_matmul_gflops(m, k, n)`: jitted XLA `[m,k] @ [k,n]` chained `repeats` times in one call (no dispatch
overhead in the figure); `torch_matmul_gflops(m, k, n)`: `torch.mm` into a preallocated output, same shapes
and repeats, with torch's current thread count. Both return GFLOP/s (2·m·k·n per product), the median of 5.
"""

from __future__ import annotations

import statistics
import time


def xla_matmul_gflops(m: int, k: int, n: int, repeats: int = 100) -> float:
    import jax
    import jax.numpy as jnp

    x = jnp.ones((m, k), jnp.float32)
    w = jnp.ones((k, n), jnp.float32) * 1e-3
    # each product's output feeds the next (cut back to [m, k]) so XLA cannot hoist or drop any of them
    f = jax.jit(lambda x, w: jax.lax.fori_loop(0, repeats, lambda i, y: x + (y @ w)[:, :k], x))
    f(x, w).block_until_ready()
    times = []
    for _ in range(5):
        t = time.perf_counter()
        f(x, w).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2 * m * k * n * repeats / statistics.median(times) / 1e9


def torch_matmul_gflops(m: int, k: int, n: int, repeats: int = 100) -> float:
    import torch

    x = torch.ones(m, k)
    w = torch.ones(k, n) * 1e-3
    out = torch.empty(m, n)
    torch.mm(x, w, out=out)
    times = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(repeats):
            torch.mm(x, w, out=out)
        times.append(time.perf_counter() - t)
    return 2 * m * k * n * repeats / statistics.median(times) / 1e9
