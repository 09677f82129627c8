"""Copy the browser libraries installed by npm (package.json) into the web server's static folder."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[3]
VENDOR_DIR = Path(__file__).resolve().parent / "static" / "vendor"
#: file served at /static/vendor/<name> -> where npm puts it
FILES = {
    "mqtt.min.js": "mqtt/dist/mqtt.min.js",
    "chart.umd.min.js": "chart.js/dist/chart.umd.min.js",
    # Chart.js's time axis needs a date adapter; the bundle includes date-fns.
    "chartjs-adapter-date-fns.bundle.min.js": "chartjs-adapter-date-fns/dist/chartjs-adapter-date-fns.bundle.min.js",
}


def missing() -> list[str]:
    """Vendor files that are not in the static folder yet."""
    return [name for name in FILES if not (VENDOR_DIR / name).exists()]


def copy(node_modules: Path = PROJECT_ROOT / "node_modules") -> None:
    """Copy every vendor file from node_modules; raise FileNotFoundError naming a missing one."""
    VENDOR_DIR.mkdir(parents=True, exist_ok=True)
    for name, source in FILES.items():
        path = node_modules / source
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: run `npm ci` (make install)")
        shutil.copyfile(path, VENDOR_DIR / name)


if __name__ == "__main__":
    try:
        copy()
    except FileNotFoundError as err:
        sys.exit(f"sensorhub: error: {err}")
