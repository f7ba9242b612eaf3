import sys

from raydprm.cli import main

sys.exit(main())
