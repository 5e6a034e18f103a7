"""``python -m testbed`` is the ``minimesh`` command."""
import sys

from testbed.cli.main import main

sys.exit(main())
