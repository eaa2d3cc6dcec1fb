"""``python -m tflite_cluster`` runs the CLI."""

import sys

from .cli import main

sys.exit(main())
