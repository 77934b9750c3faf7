"""`python -m resbench ...` is `resbench ...`."""
import sys

from .cli import main

sys.exit(main())
