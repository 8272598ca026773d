import sys

from vaegen.apps.cli import main

sys.exit(main())
