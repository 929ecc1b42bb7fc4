"""Drift, realised performance, the drift gate and retrain triggers."""
