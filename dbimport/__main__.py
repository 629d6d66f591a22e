"""`python -m dbimport`: the same as `dbimport-worker`."""
import sys

from .cli import main

sys.exit(main())
