"""Shipped pipeline presets (YAML package data): `cas-spec generate --pipeline NAME`."""
