"""A policy shift on natural English for a real instruct model (see `world`)."""
