import sys

from lm.kernels import main

sys.exit(main())
