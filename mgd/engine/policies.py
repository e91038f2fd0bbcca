"""Checkpoint policies: plain-Python schedules of the reverse sweep.

A policy turns the number of training steps ``T`` into a *plan*: a list of actions over a
single "current" training state and a set of numbered storage slots. The plan is pure Python,
so its cost can be simulated, printed and tested without JAX; `mgd.engine.replay` executes it.

Actions (``t`` is the step index of the current state; the initial state, at step 0, is in
slot 0 before the plan starts):

- ``Advance(n)``: run ``n`` training steps forward from the current state (no differentiation).
- ``Store(slot)``: keep a copy of the current state (and its step index) in ``slot``.
- ``Restore(slot)``: make the state kept in ``slot`` the current state.
- ``Free(slot)``: drop the state kept in ``slot``.
- ``Reverse(n)``: back-propagate through the ``n`` steps ``t .. t+n-1`` as one differentiated
  block: the cotangent of the state at step ``t+n`` becomes that of the state at step ``t``.
  If ``t + n == T`` the block also evaluates the objective, which seeds the sweep.

Costs are counted in training states and step evaluations:

- ``forward_steps``: every ``step_fn`` evaluation: the ``replay_steps`` run by ``Advance``
  plus the forward half of each differentiated block (``T`` in all, since every plan has
  ``vjp_steps == T``). A plan that never replays costs ``T``: one training run.
- ``replay_steps``: steps run by ``Advance`` only (Griewank's count of forward steps).
- ``peak_states``: the most states held at once: the stored slots plus the states live in the
  current action (1 while advancing; ``n`` for ``Reverse(n)``, whose block keeps the inputs of
  its ``n`` steps for the backward pass).
- ``peak_slots``: the most states stored in slots at once, the initial one included: what an
  off-device store (`mgd.engine.storage`) holds, while the device keeps only the states live in
  the current action and one prefetched state.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Callable
from typing import NamedTuple


class Advance(NamedTuple):
    """Run ``n`` steps forward from the current state."""

    n: int


class Store(NamedTuple):
    """Keep the current state in ``slot``."""

    slot: int


class Restore(NamedTuple):
    """Make the state in ``slot`` the current state."""

    slot: int


class Free(NamedTuple):
    """Drop the state in ``slot``."""

    slot: int


class Reverse(NamedTuple):
    """Back-propagate through ``n`` steps starting at the current state."""

    n: int


Action = Advance | Store | Restore | Free | Reverse


class PlanCost(NamedTuple):
    """What a plan costs, counted by `simulate`.

    Attributes:
      forward_steps: every ``step_fn`` evaluation, ``replay_steps + vjp_steps``.
      replay_steps: steps run by ``Advance`` actions.
      vjp_steps: steps back-propagated by ``Reverse`` actions (always ``T``).
      peak_states: most training states held at once (see the module docstring).
      peak_slots: most states stored in slots at once, the initial one included.
      block_lengths: the distinct ``n`` of the ``Reverse`` actions, i.e. the differentiated
        blocks the executor compiles (one compilation each; the run's last block, which also
        evaluates the objective, shares its length's program).
    """

    forward_steps: int
    replay_steps: int
    vjp_steps: int
    peak_states: int
    peak_slots: int
    block_lengths: frozenset[int]


def simulate(plan: list[Action], num_steps: int) -> PlanCost:
    """Checks a plan step by step and counts its cost, without running anything.

    Args:
      plan: the actions, as returned by `AbstractCheckpointPolicy.plan`.
      num_steps: ``T``, the number of training steps the plan reverses.

    Returns:
      The plan's `PlanCost`.

    Raises:
      ValueError: if the plan is inconsistent (restores an empty slot, stores into a taken
        one, reverses from the wrong step, or does not reverse every step exactly once).
    """
    slots: dict[int, int] = {0: 0}  # slot -> step index of the state it holds
    t = 0
    reversed_down_to = num_steps  # the sweep has back-propagated steps [reversed_down_to, T)
    forward = vjp = 0
    peak = len(slots) + 1
    peak_slots = len(slots)
    blocks = set()
    for i, action in enumerate(plan):
        match action:
            case Advance(n):
                if n < 1 or t + n > num_steps:
                    raise ValueError(f"action {i} {action}: cannot advance from step {t}")
                t += n
                forward += n
                peak = max(peak, len(slots) + 1)
            case Store(slot):
                if slot in slots:
                    raise ValueError(f"action {i} {action}: slot {slot} is taken")
                slots[slot] = t
                peak = max(peak, len(slots) + 1)
                peak_slots = max(peak_slots, len(slots))
            case Restore(slot):
                if slot not in slots:
                    raise ValueError(f"action {i} {action}: slot {slot} is empty")
                t = slots[slot]
            case Free(slot):
                if slots.pop(slot, None) is None:
                    raise ValueError(f"action {i} {action}: slot {slot} is empty")
            case Reverse(n):
                if n < 1 or t + n != reversed_down_to:
                    raise ValueError(
                        f"action {i} {action}: at step {t}, but the sweep is at step "
                        f"{reversed_down_to}"
                    )
                blocks.add(n)
                reversed_down_to = t
                vjp += n
                peak = max(peak, len(slots) + n)
            case _:
                raise ValueError(f"action {i}: unknown action {action!r}")
    if reversed_down_to != 0:
        raise ValueError(f"plan ends with steps [0, {reversed_down_to}) not reversed")
    return PlanCost(forward + vjp, forward, vjp, peak, peak_slots, frozenset(blocks))


def ceil_log(n: int, k: int) -> int:
    """Smallest integer ``d >= 0`` with ``k**d >= n`` (exact integer arithmetic)."""
    d, power = 0, 1
    while power < n:
        power *= k
        d += 1
    return d


class AbstractCheckpointPolicy(abc.ABC):
    """A checkpoint policy: decides which states the reverse sweep stores and recomputes.

    Subclasses are frozen dataclasses (hashable, comparable, validated when built) whose only
    job is `plan`, a plain-Python schedule the engine executes.
    """

    @abc.abstractmethod
    def plan(self, num_steps: int) -> list[Action]:
        """The actions that reverse ``num_steps`` training steps (see `mgd.engine.policies`)."""

    def cost(self, num_steps: int) -> PlanCost:
        """The simulated cost of this policy's plan for ``num_steps`` steps."""
        return simulate(self.plan(num_steps), num_steps)


@dataclasses.dataclass(frozen=True)
class StoreAll(AbstractCheckpointPolicy):
    """Keeps every state: the whole run is one differentiated block.

    This is reverse mode through the unrolled loop (what ``jax.grad`` of a ``lax.scan`` does):
    the fastest schedule and the memory-hungry baseline.

    Costs for ``T`` steps: ``replay_steps = 0`` (``forward_steps = T``: one training run),
    ``peak_states = T + 1``.
    """

    def plan(self, num_steps: int) -> list[Action]:
        return [Reverse(num_steps)]


@dataclasses.dataclass(frozen=True)
class KAryTree(AbstractCheckpointPolicy):
    """The lazy k-ary checkpoint tree of REPLAY (Engstrom et al., 2025).

    The run is split into ``k`` segments whose start states are stored during one forward
    pass; the segments are then reversed from last to first, each split the same way
    recursively, until a segment has at most ``k`` steps and is reversed as one differentiated
    block. Segment boundaries are aligned to multiples of ``k**j``, so every leaf block has
    exactly ``k`` steps except the run's last one.

    Costs for ``T`` steps, with ``d = ceil(log_k T)``:

    - ``peak_states = (d - 1)(k - 1) + 1 + min(k, T) <= k d + 2``;
    - ``replay_steps = (d - 1) T (1 - 1/k)`` when ``T = k**d`` (in general
      ``sum_{j=1}^{d-1}`` of the steps outside the last ``k**j``-block of their
      ``k**(j+1)``-segment): the run is replayed about ``d - 1`` times on top of the
      reverse sweep.

    ``k ~ sqrt(T)`` (depth 2, the authors' choice) replays the run once and holds about
    ``2 sqrt(T)`` states.

    Args:
      k: the branching factor, an integer ``>= 2``.

    Raises:
      ValueError: if ``k < 2`` or ``k`` is not an integer.

    Example:
      >>> mgd.KAryTree(32).cost(1000).peak_states
      63

    References:
      Engstrom, Ilyas, Chen, Feldmann, Moses, Madry. "Optimizing ML Training with
      Metagradient Descent", 2025 (REPLAY).
    """

    k: int

    def __post_init__(self):
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 2:
            raise ValueError(f"KAryTree(k={self.k!r}): k must be an integer >= 2")

    def plan(self, num_steps: int) -> list[Action]:
        plan: list[Action] = []
        self._segment(0, num_steps, plan)
        return plan

    def _segment(self, start: int, end: int, plan: list[Action]) -> None:
        # Precondition: the current state is the state at `start`, kept in slot `start`.
        length = end - start
        if length <= self.k:
            plan.append(Reverse(length))
            return
        block = self.k ** (ceil_log(length, self.k) - 1)
        starts = list(range(start, end, block))
        for previous, s in zip(starts, starts[1:], strict=False):
            plan.append(Advance(s - previous))
            plan.append(Store(s))
        for s in reversed(starts):
            if s != starts[-1]:
                plan.append(Restore(s))
            self._segment(s, min(s + block, end), plan)
            if s != start:
                plan.append(Free(s))


def binomial_beta(slots: int, repetitions: int) -> int:
    """``beta(s, r) = C(s + r, s)``: the most steps ``s`` checkpoints reverse with ``r`` replays.

    ``beta(s, r) = 0`` for ``r < 0``.
    """
    return math.comb(slots + repetitions, slots) if repetitions >= 0 else 0


def binomial_replay_steps(num_steps: int, slots: int) -> int:
    """Griewank's minimal number of forward steps to reverse ``num_steps`` with ``slots`` states.

    ``t(T, s) = r T - beta(s + 1, r - 1)`` where ``r`` is the least integer with
    ``beta(s, r) >= T`` (Griewank & Walther, 2000, Proposition 1).
    """
    if num_steps <= 1:
        return 0
    r = 0
    while binomial_beta(slots, r) < num_steps:
        r += 1
    return r * num_steps - binomial_beta(slots + 1, r - 1)


@dataclasses.dataclass(frozen=True)
class Binomial(AbstractCheckpointPolicy):
    """Griewank's binomial checkpointing (the Revolve schedule).

    With ``slots`` stored states (the initial state included) it reverses ``T`` steps with the
    fewest possible forward steps, reversing one step at a time:

    - ``replay_steps = r T - C(slots + r, r - 1)``, ``r`` the least integer with
      ``C(slots + r, slots) >= T`` (see `binomial_replay_steps`), and
      ``forward_steps = replay_steps + T``;
    - ``peak_states = slots + 1``.

    Prefer it to `KAryTree` when memory is tight: at equal peak storage it never replays more.

    Args:
      slots: number of states that may be stored, the initial one included; ``>= 1``.

    Raises:
      ValueError: if ``slots < 1`` or is not an integer.

    Example:
      >>> mgd.Binomial(4).cost(100).replay_steps
      374

    References:
      Griewank & Walther. "Algorithm 799: Revolve: an implementation of checkpointing for the
      reverse or adjoint mode of computational differentiation", ACM TOMS 26(1), 2000.
    """

    slots: int

    def __post_init__(self):
        if isinstance(self.slots, bool) or not isinstance(self.slots, int) or self.slots < 1:
            raise ValueError(f"Binomial(slots={self.slots!r}): slots must be an integer >= 1")

    def plan(self, num_steps: int) -> list[Action]:
        plan: list[Action] = []
        if self.slots == 1:
            # The one slot holds the initial state, so each step's input is recomputed from
            # it. `_segment` makes the same plan, but its split search costs O(T) per step.
            for t in range(num_steps - 1, 0, -1):
                plan += [Advance(t), Reverse(1), Restore(0)]
            plan.append(Reverse(1))
            return plan
        self._segment(0, num_steps, self.slots, plan)
        return plan

    @staticmethod
    def _split(length: int, slots: int) -> int:
        # The optimal first advances m form the range
        #   max(n - beta(s-1, r), beta(s, r-2)) <= m <= min(beta(s, r-1), n - beta(s-1, r-1)):
        # the right part (s-1 slots) needs r repetitions at most, the left part (s slots, one
        # repetition spent) r-1. Take the smallest, so less is replayed before the first turn.
        r = 0
        while binomial_beta(slots, r) < length:
            r += 1
        return max(1, length - binomial_beta(slots - 1, r), binomial_beta(slots, r - 2))

    def _segment(self, start: int, end: int, slots: int, plan: list[Action]) -> None:
        # Precondition: the current state is the state at `start`, kept in slot `start`;
        # `slots` counts that slot and the ones still free for this segment.
        # Recursion depth grows like `slots`, not T: the left part keeps `slots`, and the
        # right part, which has one slot fewer, is the one recursed into first.
        while end - start > 1:
            m = self._split(end - start, slots)
            plan.append(Advance(m))
            if end - start - m == 1:
                plan.append(Reverse(1))
            else:
                plan.append(Store(start + m))
                self._segment(start + m, end, slots - 1, plan)
                plan.append(Free(start + m))
            plan.append(Restore(start))
            end = start + m
        plan.append(Reverse(1))


def default_policy(num_steps: int) -> AbstractCheckpointPolicy:
    """The policy ``checkpoint=None`` resolves to: ``KAryTree(max(2, ceil(sqrt(T))))``.

    A depth-2 tree: one replay of the run on top of the reverse sweep, about ``2 sqrt(T)``
    states held at once. With a ``memory_budget``, `choose_for_budget` decides instead:
    ``StoreAll()`` if ``T + 1`` states fit, else ``KAryTree(max(2, ceil(sqrt(T))))`` if its
    peak fits, else that tree with its stored states in host memory or on disk if there is room,
    else ``Binomial(budget // state_bytes - 1)``.
    """
    return KAryTree(max(2, math.isqrt(max(num_steps, 2) - 1) + 1))


class BudgetChoice(NamedTuple):
    """What `choose_for_budget` picks.

    Attributes:
      policy: the checkpoint policy.
      store: where its stored states live: ``"device"``, ``"host"`` or ``"disk"`` (the names
        `mgd.metagradient`'s ``store`` takes).
    """

    policy: AbstractCheckpointPolicy
    store: str


def choose_for_budget(
    num_steps: int,
    state_bytes: int,
    budget_bytes: int,
    *,
    host_bytes: int | None = None,
    disk_bytes: int | None = None,
) -> BudgetChoice:
    """The policy and store ``metagradient(..., memory_budget=budget)`` resolves to.

    The fastest schedule whose states fit: ``n`` states fit ``b`` bytes if
    ``n * state_bytes <= b``. With stored states on the device, the device holds the plan's
    ``peak_states`` (`simulate`). With an off-device store, it holds only the states live in one
    action plus one prefetched state (``n + 1`` for the plan's longest ``Reverse(n)``), and the
    store holds ``peak_slots``. The rule returns the first of:

    1. ``StoreAll()`` if ``T + 1`` states fit, on the device (no replay);
    2. ``KAryTree(max(2, ceil(sqrt(T))))`` if its peak fits, on the device (one replay, about
       ``2 sqrt(T)`` states);
    3. that tree with its stored states in host memory (store ``"host"``) if its longest
       block plus one prefetched state (``k + 1`` states) fit ``budget_bytes`` and its
       ``peak_slots`` fit ``host_bytes``: still one replay, plus copies that overlap with
       compute;
    4. the same on disk (store ``"disk"``) with ``disk_bytes``;
    5. ``Binomial(budget // state_bytes - 1)`` on the device: the most slots that fit, hence the
       fewest forward steps any schedule achieves in that memory (``r T - C(s + r, r - 1)``).

    Args:
      num_steps: ``T``, the number of training steps, ``>= 1``.
      state_bytes: the size of one training state in bytes (the sum of its leaves' ``nbytes``).
      budget_bytes: the device memory the held training states may use, in bytes.
      host_bytes: the host memory stored states may use, in bytes; ``None`` (or too little)
        keeps them out of host memory.
      disk_bytes: the disk space stored states may use, in bytes; ``None`` (or too little) keeps
        them off disk.

    Returns:
      A `BudgetChoice` ``(policy, store)``. On the device,
      ``policy.cost(T).peak_states * state_bytes <= budget_bytes``; off it, the device holds at
      most ``budget_bytes`` and the store at most its budget.

    Raises:
      ValueError: if a byte count is not an integer ``>= 0``, or if ``budget_bytes`` is below
        ``2 * state_bytes``, what ``Binomial(1)`` (the smallest schedule: the initial state and
        the current one) needs; the message says how many bytes are needed.

    Example:
      >>> mgd.choose_for_budget(10_000, 1000, 150_000, host_bytes=10**6)
      BudgetChoice(policy=KAryTree(k=100), store='host')
    """
    offload = {"host": host_bytes, "disk": disk_bytes}
    sizes = {"state_bytes": state_bytes, "budget_bytes": budget_bytes}
    sizes |= {f"{store}_bytes": room for store, room in offload.items() if room is not None}
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an integer number of bytes >= 0, got {value!r}")

    if 2 * state_bytes > budget_bytes:
        raise ValueError(
            f"memory budget of {budget_bytes} bytes is too small: the smallest schedule, "
            f"Binomial(1), holds 2 training states of {state_bytes} bytes, so it needs "
            f"{2 * state_bytes} bytes; raise memory_budget to at least that"
        )
    choice = choose_plan(
        num_steps,
        MemorySizes.states_only(state_bytes),
        budget_bytes,
        host_bytes=host_bytes,
        disk_bytes=disk_bytes,
    )
    return BudgetChoice(choice.policy, choice.store)


def policy_for_budget(
    num_steps: int, state_bytes: int, budget_bytes: int
) -> AbstractCheckpointPolicy:
    """The policy a ``memory_budget`` picks with every state on the device: fastest that fits.

    `choose_for_budget` with no host or disk room: ``n`` states fit if
    ``n * state_bytes <= budget``, counting ``peak_states`` (`simulate`: stored slots plus the
    states live in the current action, ``n`` for a differentiated block of ``n`` steps). The
    rule returns the first of:

    1. ``StoreAll()`` if ``T + 1`` states fit (no replay);
    2. the default ``KAryTree(max(2, ceil(sqrt(T))))`` if its peak fits (one replay, about
       ``2 sqrt(T)`` states);
    3. ``Binomial(budget // state_bytes - 1)``: the most slots that fit, hence the fewest
       forward steps any schedule achieves in that memory (``r T - C(s + r, r - 1)``).

    ``metagradient(..., memory_budget=budget)`` uses it when given an explicit ``store``.

    Args:
      num_steps: ``T``, the number of training steps, ``>= 1``.
      state_bytes: the size of one training state in bytes (the sum of its leaves' ``nbytes``).
      budget_bytes: the memory the checkpointed states may use, in bytes.

    Returns:
      A checkpoint policy whose ``cost(T).peak_states * state_bytes <= budget_bytes``.

    Raises:
      ValueError: if the budget is below ``2 * state_bytes``, what ``Binomial(1)`` (the
        smallest schedule: the initial state and the current one) needs; the message says how
        many bytes are needed.

    Example:
      >>> mgd.policy_for_budget(10_000, state_bytes=1000, budget_bytes=50_000)
      Binomial(slots=49)
    """
    return choose_for_budget(num_steps, state_bytes, budget_bytes).policy


class LeafCost(NamedTuple):
    """Device bytes a differentiated block of ``n`` steps adds to the stored states.

    ``bytes(n) = sum(fixed) + n * per_step``: ``fixed`` is what the block program holds
    whatever its length (its input state, cotangents, the meta gradient, one step's VJP
    temporaries, the objective's VJP), ``per_step`` what each further step keeps until the
    block's backward pass (its residuals when fused, its input state when rematerialized).

    Attributes:
      fixed: ``((name, bytes), ...)``, the length-independent parts by name.
      per_step: bytes kept per step of the block.
      per_step_name: what ``per_step`` is, e.g. ``"block_residuals"`` or ``"block_states"``.
    """

    fixed: tuple[tuple[str, int], ...]
    per_step: int
    per_step_name: str = "block_states"

    def bytes(self, n: int) -> int:
        """The block's device bytes for ``n`` steps."""
        return sum(b for _, b in self.fixed) + n * self.per_step

    def parts(self, n: int) -> dict[str, int]:
        """``bytes(n)`` by component name."""
        return {self.per_step_name: n * self.per_step, **dict(self.fixed)}


class MemorySizes(NamedTuple):
    """What the memory model of a sweep counts, in bytes (see `sweep_peak`).

    Attributes:
      state_bytes: one training state (the sum of its leaves' ``nbytes``).
      step_bytes: what an ``Advance`` adds to the stored states: its output state and its
        temporaries (its input is a stored state).
      leaves: ``((mode, LeafCost), ...)``: the leaf modes that may run, fastest first.
      resident: ``((name, bytes), ...)``: held throughout the sweep (``meta``, the arrays of
        ``step_fn`` and ``objective_fn``).
    """

    state_bytes: int
    step_bytes: int
    leaves: tuple[tuple[str, LeafCost], ...]
    resident: tuple[tuple[str, int], ...] = ()

    @classmethod
    def states_only(cls, state_bytes: int) -> MemorySizes:
        """The model that counts training states alone: a block of ``n`` steps holds ``n``
        states, an ``Advance`` one (`simulate`'s ``peak_states``)."""
        return cls(state_bytes, state_bytes, (("fused", LeafCost((), state_bytes)),))


class SweepPeak(NamedTuple):
    """The device bytes of a sweep at its peak (`sweep_peak`).

    Attributes:
      bytes: the total.
      components: the total by name (``stored_states``, the action's parts, the resident ones).
    """

    bytes: int
    components: dict[str, int]


def sweep_peak(
    plan: list[Action], sizes: MemorySizes, mode: str, *, offloaded: bool = False
) -> SweepPeak:
    """Device bytes at the peak of a plan's sweep, in the model of ``sizes``.

    Walks the plan: during an ``Advance`` the device holds the stored states plus
    ``step_bytes``; during a ``Reverse(n)``, the stored states plus the leaf's
    ``LeafCost.bytes(n)`` in ``mode``; always, the resident bytes. With ``offloaded`` (a host
    or disk store) the device holds one stored state, the prefetched one, instead of all.

    Args:
      plan: the actions, as returned by `AbstractCheckpointPolicy.plan` (assumed valid).
      sizes: the `MemorySizes`.
      mode: the leaf mode, one of ``sizes.leaves``' names.
      offloaded: whether stored states live off the device.

    Returns:
      The `SweepPeak` (the first action reaching the maximum gives the components).
    """
    leaf = dict(sizes.leaves)[mode]
    resident = dict(sizes.resident)
    slots, best = 1, None  # The initial state is in slot 0.
    for action in plan:
        match action:
            case Store():
                slots += 1
            case Free():
                slots -= 1
            case Advance() | Reverse():
                stored = sizes.state_bytes * (1 if offloaded else slots)
                if isinstance(action, Advance):
                    parts = {"step": sizes.step_bytes}
                else:
                    parts = leaf.parts(action.n)
                total = stored + sum(parts.values()) + sum(resident.values())
                if best is None or total > best.bytes:
                    best = SweepPeak(total, {"stored_states": stored, **parts, **resident})
    return best


class PlanChoice(NamedTuple):
    """What `choose_plan` picks: the fastest plan whose peak fits.

    Attributes:
      policy: the checkpoint policy.
      store: ``"device"``, ``"host"`` or ``"disk"``.
      leaf: the leaf mode (`mgd.engine.leaf`).
      peak: its `SweepPeak` on the device.
    """

    policy: AbstractCheckpointPolicy
    store: str
    leaf: str
    peak: SweepPeak


def _format_bytes(components: dict[str, int]) -> str:
    return ", ".join(f"{name} {b}" for name, b in components.items() if b)


def choose_plan(
    num_steps: int,
    sizes: MemorySizes,
    budget_bytes: int,
    *,
    host_bytes: int | None = None,
    disk_bytes: int | None = None,
    measure: Callable[[AbstractCheckpointPolicy, str, str], SweepPeak | None] | None = None,
) -> PlanChoice:
    """The policy, store and leaf mode a ``memory_budget`` picks, counting everything.

    `choose_for_budget`'s rule with `sweep_peak` as the measure and the leaf modes of
    ``sizes`` tried in order (fastest first) for each candidate: ``StoreAll()`` on the device;
    ``KAryTree(max(2, ceil(sqrt(T))))`` on the device, then with its stored states in host
    memory, then on disk (if its ``peak_slots`` states fit there); else the ``Binomial`` with
    the most slots whose peak fits, in the leaf mode whose one-step block is smallest.

    Args:
      num_steps: ``T``, ``>= 1``.
      sizes: the `MemorySizes` of the problem.
      budget_bytes: the device bytes the sweep may hold at its peak.
      host_bytes: host memory for stored states; ``None``: no host store.
      disk_bytes: disk space for stored states; ``None``: no disk store.
      measure: ``(policy, store, leaf) -> SweepPeak | None``, the peak of what would really
        run, asked only of candidates whose modelled peak fits (it may compile); a candidate
        fits if that peak does (``None``: the model's). `mgd.engine.memory` passes the
        compiled sweep's memory analysis, since the sweep of a device store is one program
        whose buffers XLA assigns differently from the sum of its parts.

    Returns:
      A `PlanChoice` whose ``peak.bytes <= budget_bytes``.

    Raises:
      ValueError: if even ``Binomial(1)`` in the leanest leaf mode does not fit; the message
        gives its bytes by component.
    """

    def fitting(policy, store, mode, peak: SweepPeak) -> PlanChoice | None:
        if peak.bytes > budget_bytes:
            return None
        measured = None if measure is None else measure(policy, store, mode)
        peak = peak if measured is None else measured
        return PlanChoice(policy, store, mode, peak) if peak.bytes <= budget_bytes else None

    leaves = dict(sizes.leaves)
    s = sizes.state_bytes
    tree = default_policy(num_steps)
    candidates = [(StoreAll(), "device"), (tree, "device")]
    offload = {"host": host_bytes, "disk": disk_bytes}
    tree_slots = tree.cost(num_steps).peak_slots if num_steps > tree.k else 1
    candidates += [(tree, st) for st, room in offload.items() if room is not None]
    for policy, store in candidates:
        if store != "device" and tree_slots * s > offload[store]:
            continue
        plan = policy.plan(num_steps)
        for mode in leaves:
            peak = sweep_peak(plan, sizes, mode, offloaded=store != "device")
            if choice := fitting(policy, store, mode, peak):
                return choice
    # Binomial(slots) holds at most `slots` stored states and reverses one step at a time:
    # its peak is at most that many states plus the larger action (not walked: its plan has
    # O(T log T) actions).
    mode = min(leaves, key=lambda m: leaves[m].bytes(1))
    action = {"step": sizes.step_bytes}
    if leaves[mode].bytes(1) >= sizes.step_bytes:
        action = leaves[mode].parts(1)
    resident = dict(sizes.resident)
    fixed = sum(action.values()) + sum(resident.values())
    slots = max(1, min((budget_bytes - fixed) // s if s else num_steps, num_steps))
    while True:
        stored = slots * s
        peak = SweepPeak(stored + fixed, {"stored_states": stored, **action, **resident})
        # Measured also when the model does not fit: the error then says what would run.
        if measure is not None and (peak.bytes <= budget_bytes or slots == 1):
            peak = measure(Binomial(slots), "device", mode) or peak
        if peak.bytes <= budget_bytes:
            return PlanChoice(Binomial(slots), "device", mode, peak)
        if slots == 1:
            break
        # The model fits but what would run does not: fewer slots, by the overshoot.
        over = -(-(peak.bytes - budget_bytes) // s) if s else 1
        slots = max(1, slots - over)
    raise ValueError(
        f"memory budget of {budget_bytes} bytes is too small: the leanest plan, Binomial(1) "
        f"with leaf={mode!r}, needs {peak.bytes} bytes ({_format_bytes(peak.components)}); "
        f"raise memory_budget to at least {peak.bytes}"
    )


def next_restores(plan: list[Action]) -> dict[int, int]:
    """For each ``Reverse`` in ``plan``, the slot the plan restores next, where known.

    Maps the ``Reverse``'s index to the slot of the first ``Restore`` after it, unless that
    slot is stored or freed in between; the executor hands it to the store's ``prefetch``.
    """
    hints: dict[int, int] = {}
    pending: list[int] = []  # Reverse indices waiting for the next Restore
    touched: set[int] = set()  # slots stored or freed since the oldest pending Reverse
    for i, action in enumerate(plan):
        match action:
            case Reverse():
                pending.append(i)
            case Store(slot) | Free(slot) if pending:
                touched.add(slot)
            case Restore(slot):
                if slot not in touched:
                    hints.update(dict.fromkeys(pending, slot))
                pending, touched = [], set()
    return hints
