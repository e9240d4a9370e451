"""Frozen job specifications with parse_* validators (pure: no I/O, no clock)."""
