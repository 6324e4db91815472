"""The embedded default: `eve-ms demo` runs the whole three-stage method on a tiny model (see pipeline.py)."""
