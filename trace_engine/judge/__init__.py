"""Judges decide whether a response complies with a policy: a prompt constant, a client, a pure parser."""
