import sys

from vaegen.cli import main

sys.exit(main())
