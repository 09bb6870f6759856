"""xlit beam_pipelines."""
