"""The `retrieve` command line."""
