"""`python -m dbimport.loader`: the same as `dbimport-load`."""
import sys

from .cli import main

sys.exit(main())
