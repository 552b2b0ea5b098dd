"""Plain data shared across layers: what the adapters report, for the planners to judge.

No I/O and no policy here, so an adapter (vmsnapd.zfs) can build these without importing the rules
(vmsnapd.policy) or the configuration that judge them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

# How a cycle held the VM still (or "plain": a dataset without a VM); recorded in the journal and in each RAM
# dump manifest.
CycleMethod = Literal["overlay", "pause", "plain"]

# How a RAM dump is stored: `[daemon] ram_compression`, and what each manifest says.
Compression = Literal["none", "zstd"]


class Snapshot(BaseModel):
    """One snapshot as `zfs list` reports it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dataset: str
    name: str = Field(description="The short name, after '@'.")
    creation: AwareDatetime
    userrefs: int = Field(0, ge=0, description="Number of holds; a held snapshot is never destroyed.")

    @property
    def full_name(self) -> str:
        return f"{self.dataset}@{self.name}"
