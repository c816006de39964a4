"""The shape registry: named head configurations and the points each suite measures.

A *config* fixes the heads (NH, DHQK, DHHV) and the attention peer's heads; a *suite* turns a
config into a list of points (B, NH, S, DHQK, DHHV). Every suite keeps the work per point
comparable: the training suites hold the token count B·S fixed, the step suite sweeps B.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace


@dataclass(frozen=True)
class HeadConfig:
    name: str
    NH: int
    DHQK: int
    DHHV: int
    # The attention peer (torch SDPA, causal) at the same token count: NH_ATTN heads of DH_ATTN.
    NH_ATTN: int
    DH_ATTN: int
    note: str = ""


CONFIGS: dict[str, HeadConfig] = {
    "A": HeadConfig("A", NH=8, DHQK=256, DHHV=512, NH_ATTN=32, DH_ATTN=128,
                    note="xLSTM 7B-like heads (the peer table in SPEC §7)"),
    "B": HeadConfig("B", NH=16, DHQK=128, DHHV=256, NH_ATTN=32, DH_ATTN=128,
                    note="more, smaller heads"),
    # Smoke-test shapes for --quick (CPU, seconds).
    "tiny": HeadConfig("tiny", NH=2, DHQK=32, DHHV=48, NH_ATTN=4, DH_ATTN=16, note="CPU smoke test"),
}


@dataclass(frozen=True)
class Point:
    """One measured shape. `x` is the value on the plot's x axis (S, DHQK or B)."""

    suite: str
    B: int
    NH: int
    S: int
    DHQK: int
    DHHV: int
    x: int
    NH_ATTN: int = 0
    DH_ATTN: int = 0

    def as_dict(self) -> dict:
        return asdict(self)

    def label(self) -> str:
        return f"B={self.B} NH={self.NH} S={self.S} DHQK={self.DHQK} DHHV={self.DHHV}"


@dataclass(frozen=True)
class Suite:
    name: str
    x_name: str  # the swept quantity, for tables and plots
    modes: tuple[str, ...]  # "fw", "fwbw"
    kind: str  # "training", "step" or "sequence": which kernel interface it calls
    description: str


SUITES: dict[str, Suite] = {
    "consttoken": Suite(
        "consttoken", "S", ("fw", "fwbw"), "training",
        "training kernels at a constant token count B·S = 65,536, S = 512 … 65,536",
    ),
    "headdim": Suite(
        "headdim", "DHQK", ("fw", "fwbw"), "training",
        "training kernels at S = 8192, B = 8 over DHQK = 64 … 512 (DHHV/DHQK as in the config)",
    ),
    "step": Suite(
        "step", "B", ("fw",), "step",
        "one recurrent step, B = 1 … 256: time, GB/s of the state read+write, % of the copy bandwidth",
    ),
    "sequence": Suite(
        "sequence", "S", ("fw",), "sequence",
        "recurrent inference over S steps: one sequence kernel vs a loop of step kernels",
    ),
}

TOKENS = 65_536
TOKENS_QUICK = 256


def points(suite: str, config: HeadConfig, quick: bool = False) -> list[Point]:
    """The points of `suite` for `config`; `quick` gives a handful of tiny ones."""
    base = Point(suite, B=1, NH=config.NH, S=1, DHQK=config.DHQK, DHHV=config.DHHV, x=0,
                 NH_ATTN=config.NH_ATTN, DH_ATTN=config.DH_ATTN)
    if suite == "consttoken":
        tokens = TOKENS_QUICK if quick else TOKENS
        seq_lens = [64, 256] if quick else [512 << p for p in range(8)]  # 512 … 65,536
        return [replace(base, B=tokens // S, S=S, x=S) for S in seq_lens]
    if suite == "headdim":
        S, B = (64, 2) if quick else (8192, 8)
        ratio = config.DHHV / config.DHQK
        head_dims = [16, 32] if quick else [64, 128, 256, 512]
        return [replace(base, B=B, S=S, DHQK=d, DHHV=int(d * ratio), x=d) for d in head_dims]
    if suite == "step":
        batches = [1, 4] if quick else [1 << p for p in range(9)]  # 1 … 256
        return [replace(base, B=b, S=1, x=b) for b in batches]
    if suite == "sequence":
        B = 2 if quick else 8
        seq_lens = [8, 32] if quick else [64, 256, 1024, 4096]
        return [replace(base, B=B, S=S, x=S) for S in seq_lens]
    raise ValueError(f"unknown suite '{suite}' (known: {', '.join(SUITES)})")
