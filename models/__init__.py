"""xlit models."""
