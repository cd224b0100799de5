import sys

from master_service.cli import main

sys.exit(main())
