"""Unit tests of agentstream.cli."""
