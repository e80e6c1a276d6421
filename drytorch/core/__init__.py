"""The kernel: experiments, runs, events and trackers.

Nothing here talks to torch.distributed beyond asking
``drytorch.distributed.ranks`` which rank this process is.
"""
