"""Unit tests of agentstream.ingress."""
