"""``python -m cnm_runtime`` is ``cnm-run``."""
from cnm_runtime.cli import main

if __name__ == "__main__":
    main()
