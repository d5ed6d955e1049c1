"""`python -m cli`, the same as `ledger`."""

import sys

from cli import main

sys.exit(main())
