"""A stand-in for the heavy imports a server shares (FastAPI, SQLAlchemy…): remembers which process imported it."""

import os

IMPORTED_IN = os.getpid()
