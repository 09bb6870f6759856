"""xlit evalsuite."""
