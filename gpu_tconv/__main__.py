"""``python -m gpu_tconv``: the ``gpu-tconv`` command line."""
from .cli import main

raise SystemExit(main())
