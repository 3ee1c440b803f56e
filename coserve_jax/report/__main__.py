"""``python -m coserve_jax.report``: see `coserve_jax.report.cli`."""

import sys

from coserve_jax.report.cli import main

sys.exit(main())
