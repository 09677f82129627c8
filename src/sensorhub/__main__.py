"""`python -m sensorhub` runs the command line."""

from __future__ import annotations

from sensorhub.cli import main

if __name__ == "__main__":
    main()
