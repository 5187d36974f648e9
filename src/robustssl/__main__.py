import sys

from robustssl.cli.main import main

sys.exit(main())
