"""``python -m sylphx``: the CLI (also how the embedded control plane is started)."""

from ._cli import main

if __name__ == "__main__":
    main()
