"""The decode benchmark's accounting: the bytes a decode step must read, against numbers worked out by hand,
and the check that flags a decode-only figure it cannot trust."""

from __future__ import annotations

from bench.decode import bytes_per_step, decode_check
from models.config import preset


def test_decode_bytes_per_step_smollm2():
    # per layer: q, o 576x576; k, v 576x192; gate, up 576x1536; down 1536x576 -> 3,538,944 weights; x30 layers
    # plus the tied 49,152 x 576 embedding read in full as the LM head: 134,479,872 fp32 weights
    weights = 30 * (2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536) + 49152 * 576
    assert weights == 134_479_872
    # keys and values: 2 x 30 layers x 3 KV heads x 64 dims, fp32, per cached token per row
    kv_per_token = 2 * 30 * 3 * 64 * 4
    assert bytes_per_step(preset("smollm2_135m"), batch=2, context=10) == 4 * weights + kv_per_token * 2 * 10


def test_decode_check_flags_figures_it_cannot_trust():
    # the 2026-12-03 10:40 AVX2 run: 4.37 s of prefill in a 5.10 s call, decode "at" 185 GFLOP/s, ceiling 120
    why = decode_check(185.1, 28.2, 120.3, 0.73 / 5.10)
    assert "xlit's decode phase at 185 GFLOP/s exceeds the 120 measured ceiling" in why
    assert "only 14% of xlit's call" in why
    assert "transformers" not in why
    assert decode_check(90.0, 130.0, 120.0, 0.5).startswith("transformers' decode phase at 130 GFLOP/s")
    # the 04:16 run: 303 vs 121 tok/s, 83.0 / 33.1 GFLOP/s against a 123.9 ceiling, decode 34% of the call
    assert decode_check(83.0, 33.1, 123.9, 0.34) == ""
