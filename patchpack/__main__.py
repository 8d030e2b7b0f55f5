import sys

from patchpack.cli import main

sys.exit(main())
