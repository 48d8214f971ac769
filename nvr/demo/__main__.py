import sys

from nvr.demo.cli import main

sys.exit(main())
