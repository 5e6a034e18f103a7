"""``python -m testbed`` is the ``minimesh`` command."""
import sys

from testbed.cli import main

sys.exit(main())
