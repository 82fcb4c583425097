"""``python -m rewardscope.cli``: the console script."""

import sys

from rewardscope.cli import main

sys.exit(main())
