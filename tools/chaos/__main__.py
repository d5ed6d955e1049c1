"""`python -m tools.chaos`, the same as `ledger chaos`."""

import sys

from tools.chaos import main

sys.exit(main())
