"""Scaling out: launchers (local, torchrun), data- and pipeline-parallel steps on
torch.distributed, and the communication they are held against (the AttnRes paper's Eq. 7/8)."""
