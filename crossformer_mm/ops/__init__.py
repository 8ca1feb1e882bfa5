"""Native ops."""
