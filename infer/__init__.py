"""xlit infer."""
