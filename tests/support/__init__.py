"""Helpers shared by the test packages (one place, never copied between test files)."""
