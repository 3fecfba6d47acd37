import sys

from memstate.cli import main

sys.exit(main())
