"""ttsyncd: keeps a tinytown town's tasks.toml and its Redis tasks in sync, both ways."""

__version__ = "0.1.0"
