"""The decode benchmark's accounting: the bytes a decode step must read, against numbers worked out by hand."""

from __future__ import annotations

from bench.decode import bytes_per_step
from models.config import preset


def test_decode_bytes_per_step_smollm2():
    # per layer: q, o 576x576; k, v 576x192; gate, up 576x1536; down 1536x576 -> 3,538,944 weights; x30 layers
    # plus the tied 49,152 x 576 embedding read in full as the LM head: 134,479,872 fp32 weights
    weights = 30 * (2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536) + 49152 * 576
    assert weights == 134_479_872
    # keys and values: 2 x 30 layers x 3 KV heads x 64 dims, fp32, per cached token per row
    kv_per_token = 2 * 30 * 3 * 64 * 4
    assert bytes_per_step(preset("smollm2_135m"), batch=2, context=10) == 4 * weights + kv_per_token * 2 * 10
