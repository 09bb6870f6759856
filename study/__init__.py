"""Orchestration on top of everything: the grid, the demo, the demo judge server, calibration, replication."""
