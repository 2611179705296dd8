"""The parameter every picker takes."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["PickerParams"]


class PickerParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    maxNumOfEndpoints: int = Field(
        default=1,
        description="How many endpoints to return: the primary, then fallbacks in order; <= 0 means 1.",
    )

    @property
    def count(self) -> int:
        return self.maxNumOfEndpoints if self.maxNumOfEndpoints > 0 else 1
