"""Preference-pair datasets: reading, validation, presets, splits."""
