"""Test support: real components for tests (a fake OpenAI-compatible HTTP server on loopback)."""
