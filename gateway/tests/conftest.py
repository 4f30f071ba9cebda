import sys
from pathlib import Path

# harness.py sits beside the tests (import mode is importlib: the test directory is not on sys.path by itself).
sys.path.insert(0, str(Path(__file__).parent))
