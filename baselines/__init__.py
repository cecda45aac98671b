"""Reimplemented baselines; each module holds one model registered under its paper name."""
