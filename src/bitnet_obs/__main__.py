import sys

from bitnet_obs.cli import main

sys.exit(main())
