"""Train one Eve stage from a MindFormers-style yaml: `python tools/run_eve.py --config X.yaml [--resume]`.

The same as `eve-ms train`, as a script for MindFormers-style launches: alone it runs on one
process; under `msrun --worker_num=N --local_worker_num=N ... tools/run_eve.py --config X.yaml`
it is one rank of an N-way data-parallel job (see eve_ms.training.launch). Works from a source
checkout without `pip install`: the repository root is put on the import path.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from eve_ms.training.launch import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
