"""Unit tests of agentstream.schemas."""
