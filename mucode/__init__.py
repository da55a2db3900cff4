"""µCode: multi-turn code generation trained by expert iteration with a learned verifier.

Importing the package makes CPU torch's OpenMP threads yield the CPU while they wait
(``OMP_WAIT_POLICY=PASSIVE``) unless the caller chose a policy: with two threads and any
other busy process, spinning threads made generation collapse below 1 tok/s (17 tok/s once
passive). The OpenMP runtime reads the variable once, when torch loads, so this must run
before ``import torch``; every entry point imports ``mucode`` first.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
