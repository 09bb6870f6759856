"""xlit train."""
