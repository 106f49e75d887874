"""What sealed incidents cost a security manager: ``bench/reach_list.py --of incidents`` (the same
harness, options and results file, ``bench/results/incident_list[-sqlite][-label].json``).
Run it alone: ``flock -x /tmp/bench.lock .venv/bin/python -m bench.incident_list [--sqlite]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.reach_list import main  # noqa: E402

if __name__ == "__main__":
    main(default_of="incidents")
