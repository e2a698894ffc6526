"""`python -m cosmos_models.cli ...` (what torchrun launches): the `cosmos` command."""
import sys

from cosmos_models.cli import main

sys.exit(main())
