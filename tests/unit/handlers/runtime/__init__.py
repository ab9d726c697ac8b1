"""Unit tests of agentstream.handlers.runtime."""
