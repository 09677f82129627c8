"""Database layer: models, engines with their pragmas and triggers, and queries."""
