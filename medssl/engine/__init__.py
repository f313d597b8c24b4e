"""The training engine: the loop on Lightning Fabric, schedules, EMA, checkpoints, metrics."""
