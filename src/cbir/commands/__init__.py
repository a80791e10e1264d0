"""CLI command groups that live beside their feature area.

Each module exposes ``register(sub, parser_class)`` which adds its sub-commands to the
``cbir`` parser; ``cbir.cli`` calls every one of them. Commands only wire parts together.
"""
