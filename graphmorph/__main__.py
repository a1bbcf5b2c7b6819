"""`python -m graphmorph` runs the command line."""
import sys

from graphmorph.cli import main

sys.exit(main())
