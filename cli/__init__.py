"""The command line, the top layer beside `app.py`: `python -m cli <command>` (and `python -m core <command>`)."""
