"""`python -m node_publisher` runs the `cluster-node` command."""

import sys

from node_publisher.cli import main

sys.exit(main())
