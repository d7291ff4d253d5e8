"""A preallocated KV cache for lock-step rollouts, plugged into any HF causal LM through the standard
Cache API.

Every row shares one write pointer (`length`): prompts are left-padded to a common length and the
padding is masked. Buffers are [max_rows, H_kv, max_seq_len, D] per layer, allocated on the first
forward and reused by every later call; `update` writes the new keys/values in place and returns views
of the first `length + q` positions (no torch.cat per step, unlike DynamicCache). The sampler moves
rows around explicitly: `fork` copies each prefilled prompt into its G sample rows, `keep_rows`
compacts the rows still decoding into a dense prefix.

Shared-prefix mode (`share_prefix`, see shared_prefix.py): instead of forking, row b keeps prompt b's
keys at positions [0, P) and every row writes its generated keys at [P, ...); `update` then returns
only those generated keys and the shared-prefix attention reads the prompts' keys itself, once per group.
"""
from __future__ import annotations

from torch import Tensor
from transformers.cache_utils import Cache, CacheLayerMixin


class _RolloutLayer(CacheLayerMixin):
    """One decoder layer's slice of the rollout cache (the pointer lives in the owning cache)."""

    is_compileable = False
    is_sliding = False

    def __init__(self, owner: "RolloutCache"):
        super().__init__()
        self.owner = owner

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        rows, seq = self.owner.max_rows, self.owner.max_seq_len
        self.dtype, self.device = key_states.dtype, key_states.device
        self.key_buffer = key_states.new_empty(rows, key_states.shape[1], seq, key_states.shape[3])
        self.value_buffer = value_states.new_empty(rows, value_states.shape[1], seq, value_states.shape[3])
        self.is_initialized = True

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        if not self.is_initialized or self.key_buffer.dtype != key_states.dtype \
                or self.key_buffer.device != key_states.device or self.key_buffer.shape[1] != key_states.shape[1]:
            self.lazy_initialization(key_states, value_states)
        rows, start, q = key_states.shape[0], self.owner.length, key_states.shape[2]
        if start + q > self.owner.max_seq_len:
            raise ValueError(f"the rollout cache holds max_seq_len={self.owner.max_seq_len} positions; "
                             f"writing {q} at position {start} overflows it")
        self.key_buffer[:rows, :, start:start + q] = key_states
        self.value_buffer[:rows, :, start:start + q] = value_states
        first = self.owner.shared_prefix or 0  # a shared prefix is read by the attention, not returned
        self.keys = self.key_buffer[:rows, :, first:start + q]
        self.values = self.value_buffer[:rows, :, first:start + q]
        return self.keys, self.values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.owner.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.owner.length

    def get_max_length(self) -> int:
        return self.owner.max_seq_len

    def fork(self, prompts: int, group: int, length: int) -> None:
        """Rows [0, prompts) -> rows [b*group, (b+1)*group) for each prompt b, first `length` positions."""
        for buffer in (self.key_buffer, self.value_buffer):
            src = buffer[:prompts, :, :length].clone()  # the targets overlap the sources
            target = buffer[:prompts * group, :, :length].unflatten(0, (prompts, group))
            target.copy_(src.unsqueeze(1).expand_as(target))

    def keep_rows(self, rows: Tensor, first: int, length: int) -> None:
        """Rows `rows` (ascending) -> rows [0, len(rows)), positions [first, length)."""
        for buffer in (self.key_buffer, self.value_buffer):
            buffer[:rows.numel(), :, first:length] = buffer[:, :, first:length].index_select(0, rows)


class RolloutCache(Cache):
    """The cache handed to the model as `past_key_values` (one `_RolloutLayer` per decoder layer)."""

    def __init__(self, num_layers: int, max_rows: int, max_seq_len: int):
        self.max_rows, self.max_seq_len, self.length = max_rows, max_seq_len, 0
        self.shared_prefix: int | None = None  # P while rows share their prompt's keys instead of copies
        super().__init__(layers=[_RolloutLayer(self) for _ in range(num_layers)])

    def reset(self) -> None:
        self.length, self.shared_prefix = 0, None

    def advance(self, steps: int) -> None:
        """Called after each forward: the positions just written become part of the past."""
        self.length += steps

    def fork(self, prompts: int, group: int) -> None:
        for layer in self.layers:
            if layer.is_initialized:
                layer.fork(prompts, group, self.length)

    def share_prefix(self) -> None:
        """Instead of fork: each prompt's keys stay in its row b, read by all G rows of its group (the
        prompts' rows keep them at [0, P) while every row writes its own tokens from P on)."""
        self.shared_prefix = self.length

    def keep_rows(self, rows: Tensor) -> None:
        for layer in self.layers:
            if layer.is_initialized:
                layer.keep_rows(rows, self.shared_prefix or 0, self.length)

    def nbytes(self) -> int:
        return sum(l.key_buffer.nbytes + l.value_buffer.nbytes for l in self.layers if l.is_initialized)
