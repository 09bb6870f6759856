"""xlit bench."""
