"""Which process of a distributed run this is, and logging from rank zero only.

Under torchrun, SLURM or Fabric's own launcher every rank runs the same ``medssl run``;
without a filter each log line would appear once per rank. Ranks other than zero keep
their warnings and errors (a load failure or a stop on one rank matters), marked with
the rank.
"""

from __future__ import annotations

import logging
import os
import sys

__all__ = ["RankZeroFilter", "process_rank"]

# The launchers' variables, most specific first: torchrun and Fabric's launcher set RANK
# (Fabric's subprocesses: LOCAL_RANK and NODE_RANK), SLURM sets SLURM_PROCID.
_RANK_VARIABLES = ("RANK", "SLURM_PROCID", "PMI_RANK", "OMPI_COMM_WORLD_RANK")


def process_rank() -> int:
    """This process' global rank: torch.distributed's once initialised, else the launcher's."""
    dist = sys.modules.get("torch.distributed")  # never import torch just to log
    if dist is not None and dist.is_available() and dist.is_initialized():
        return int(dist.get_rank())
    for name in _RANK_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    local, node = os.environ.get("LOCAL_RANK", ""), os.environ.get("NODE_RANK", "0")
    if local.isdigit():
        # Fabric's subprocess launcher sets these before RANK exists; a rank on another
        # node than the first is never rank 0, whatever its exact number.
        per_node = os.environ.get("LOCAL_WORLD_SIZE", "")
        nodes_before = int(node) if node.isdigit() else 0
        return int(local) + nodes_before * (int(per_node) if per_node.isdigit() else 1)
    return 0


class RankZeroFilter(logging.Filter):
    """Passes every record on rank 0; on other ranks warnings and errors only, prefixed."""

    def filter(self, record: logging.LogRecord) -> bool:
        rank = process_rank()
        if rank == 0:
            return True
        if record.levelno < logging.WARNING:
            return False
        if not getattr(record, "_medssl_rank_marked", False):
            record.msg = f"[rank {rank}] {record.msg}"
            record._medssl_rank_marked = True  # type: ignore[attr-defined]
        return True
