#!/usr/bin/env python3
"""Parameters, GMACs, latency, throughput, training speed and peak memory of timm / vitzoo models.

The same program as the `vitzoo-profile` console script (code: `vitzoo/cli/profile.py`):

    python tools/profile_models.py 'vitzoo_*' --device cpu -b 8 --out-dir prof/
    python tools/profile_models.py vitzoo_efficientvit_m0 --fuse --compare-timm --official
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vitzoo.cli.profile import *  # noqa: E402,F401,F403  (the tool's functions, for scripts and tests)
from vitzoo.cli.profile import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
