"""Test support: a script entry to `eve-ms train` (what `tools/run_eve.py` is), for subprocesses and msrun."""
import sys

from eve_ms.training.launch import main

if __name__ == "__main__":
    sys.exit(main())
