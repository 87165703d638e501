import sys

from trace_engine.cli import main

sys.exit(main())
