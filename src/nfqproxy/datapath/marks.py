"""How a verdict reaches the kernel: packet mark bits, inside a mask the operator chooses.

The hooks (nfqproxy.hooks) match these bits, every queue binding sets them, and the offload
path's DNAT map is keyed by them. A verdict clears and sets bits inside the mask only; a bit
outside it is never touched, so other users of the mark keep theirs.

Inside the mask, the six lowest bits are flags and the others hold the offload path's
backend ids. Three flags are the verdict's (proxied, reject, masquerade). The other three
are the hooks' rules' findings about a queued packet's source (pod, off-cluster, node),
which the data path reads from the mark it receives and clears in its verdict. The default
mask keeps clear of kube-proxy's 0x4000/0x8000 and Cilium's 0x0f00; docs/design.md
("Marks") says how to choose another, for example next to Calico, which takes 0xffff0000
unless told otherwise."""

from __future__ import annotations

from dataclasses import dataclass, field

from nfqproxy import defaults

FLAG_BITS = 6  # proxied, reject, masquerade; the source's: pod, off-cluster, node
MIN_ID_BITS = 4  # a mask must leave room for at least 15 backends
# A queued packet's source, as the data paths take it (source_bits): what the hooks' rules
# found before queueing it.
SOURCE_POD = 1  # inside the cluster, by --cluster-cidr (kube-proxy's local traffic detector)
SOURCE_OFF_CLUSTER = 2  # outside it; neither bit when no --cluster-cidr is given
SOURCE_NODE = 4  # sent by this node (addrtype LOCAL)


def _bits(mask: int) -> list[int]:
    """The set bits of a mask, lowest first, as single-bit values."""
    return [1 << i for i in range(32) if mask >> i & 1]


@dataclass(frozen=True)
class MarkLayout:
    mask: int = defaults.MARK_MASK
    proxied: int = field(init=False)  # a request sent to a backend (fast: its replies queued)
    reject: int = field(init=False)  # the filter table's REJECT rule answers the packet
    masquerade: int = field(init=False)  # a hairpin, or a source the policy masquerades
    source_pod: int = field(init=False)  # the source is in --cluster-cidr
    source_off_cluster: int = field(init=False)  # it is not (set only with --cluster-cidr)
    source_node: int = field(init=False)  # the packet comes from this node
    id_mask: int = field(init=False)  # the offload path's backend ids

    def __post_init__(self) -> None:
        if not 0 < self.mask <= 0xFFFFFFFF:
            raise ValueError(f"mark mask {self.mask:#x} is not a 32-bit mask")
        bits = _bits(self.mask)
        if len(bits) < FLAG_BITS + MIN_ID_BITS:
            raise ValueError(
                f"mark mask {self.mask:#010x} has {len(bits)} bits; nfqproxy needs at least "
                f"{FLAG_BITS + MIN_ID_BITS} ({FLAG_BITS} flags and room for backend ids)"
            )
        object.__setattr__(self, "proxied", bits[0])
        object.__setattr__(self, "reject", bits[1])
        object.__setattr__(self, "masquerade", bits[2])
        object.__setattr__(self, "source_pod", bits[3])
        object.__setattr__(self, "source_off_cluster", bits[4])
        object.__setattr__(self, "source_node", bits[5])
        object.__setattr__(self, "id_mask", sum(bits[FLAG_BITS:]))

    @property
    def max_backend_id(self) -> int:
        return (1 << (self.id_mask.bit_count())) - 1

    def backend_mark(self, backend_id: int) -> int:
        """The id's bits spread over id_mask, lowest first (a mask need not be contiguous)."""
        if not 0 < backend_id <= self.max_backend_id:
            raise ValueError(f"backend id {backend_id} is outside 1-{self.max_backend_id}")
        mark = 0
        for i, bit in enumerate(_bits(self.id_mask)):
            if backend_id >> i & 1:
                mark |= bit
        return mark

    def source_bits(self, mark: int) -> int:
        """The SOURCE_* flags a queued packet's mark carries."""
        return (
            (SOURCE_POD if mark & self.source_pod else 0)
            | (SOURCE_OFF_CLUSTER if mark & self.source_off_cluster else 0)
            | (SOURCE_NODE if mark & self.source_node else 0)
        )

    def backend_id(self, mark: int) -> int:
        """backend_mark's inverse; 0 when the mark names no backend."""
        return sum(1 << i for i, bit in enumerate(_bits(self.id_mask)) if mark & bit)


def parse_mask(text: str) -> MarkLayout:
    """--mark-mask: a hexadecimal (0x...) or decimal 32-bit mask."""
    try:
        mask = int(text, 0)
    except ValueError:
        raise ValueError(f"mark mask {text!r} is not a number (write it as 0xffff00ff)") from None
    return MarkLayout(mask)
