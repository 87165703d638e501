"""TRACE re-alignment engine: triage, impact scoring, hybrid LoRA training, evaluation.

The engine is a library and the `realign` CLI; it never imports the service (api/, worker/).
"""

__version__ = "0.1.0"
