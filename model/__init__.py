"""Per-image anomaly baselines for container behaviour."""
