"""The sandbox worker: the stdlib-only code that runs programs.

Everything in this package runs either as a local worker process or inside the sandbox
container image, so it imports nothing outside the standard library (Python 3.10+) and only
relative imports among its own modules (the image carries it as the top-level package
`worker`). Host-side code lives one level up, in `mucode.sandbox`.
"""
