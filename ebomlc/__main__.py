import sys

from ebomlc.cli import main

sys.exit(main())
