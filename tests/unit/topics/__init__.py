"""Unit tests of agentstream.topics."""
