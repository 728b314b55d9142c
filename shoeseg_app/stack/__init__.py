"""Processes the product runs beside itself: Label Studio and Redis."""
