"""LoRA adapter slots: which adapters are resident on the simulated GPU, with LRU eviction.

Like vLLM, a batch may use at most `max_loras` distinct adapters; a request whose adapter is not
among the adapters of the running batch waits while all slots are busy. Making an adapter resident
costs a load delay (added to the step that first uses it); the least recently used adapter that the
batch does not use is evicted to make room.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection

__all__ = ["LoraSlots"]


class LoraSlots:
    def __init__(self, max_loras: int) -> None:
        if max_loras < 1:
            raise ValueError("max_loras must be >= 1")
        self.max_loras = max_loras
        self._resident: OrderedDict[str, None] = OrderedDict()
        self.loads = 0
        self.evictions = 0

    @property
    def resident(self) -> list[str]:
        """Resident adapters, least recently used first."""
        return list(self._resident)

    def can_schedule(self, adapter: str, batch_adapters: Collection[str]) -> bool:
        """Whether a request for `adapter` may join a batch already using `batch_adapters`."""
        return adapter in batch_adapters or len(batch_adapters) < self.max_loras

    def ensure_resident(self, adapter: str, batch_adapters: Collection[str]) -> bool:
        """Make `adapter` resident (evicting an idle one if needed); True when a load happened."""
        if adapter in self._resident:
            self._resident.move_to_end(adapter)
            return False
        if len(self._resident) >= self.max_loras:
            victim = next((a for a in self._resident if a not in batch_adapters), None)
            if victim is None:
                raise RuntimeError("no idle LoRA slot to evict: the batch uses more adapters than slots")
            del self._resident[victim]
            self.evictions += 1
        self._resident[adapter] = None
        self.loads += 1
        return True

    def clear(self) -> None:
        self._resident.clear()
