import sys

from memstate.cli.main import main

sys.exit(main())
