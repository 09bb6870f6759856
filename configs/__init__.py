"""xlit configs."""
