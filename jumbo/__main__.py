"""``python -m jumbo``: run the pilot (see jumbo.pilot)."""

import sys

from jumbo.pilot import main

sys.exit(main())
