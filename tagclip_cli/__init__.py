"""The `tagclip` command line: tag image folders to JSON lines, evaluate them against ground truth.

Commands live in their own modules and are imported only when run (see `tagclip_cli.main`), so commands
that do not need the engine never import torch.
"""
