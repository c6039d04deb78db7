"""The Ray Data adapter of the extraction: the steps as ``map_batches`` operators with actor pools sized from the
cluster, Ray's SQL reader for database inputs, and the extraction's metrics as Ray metrics.

The only module of ``hummingml.extract`` that imports ``ray`` directly.
"""

from __future__ import annotations

import functools
import io
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TextIO, cast

import ray
import ray.data
from ray.util.metrics import Counter, Gauge, Histogram

from hummingml.audio import STEMS
from hummingml.config import ConfigError
from hummingml.extract import plan
from hummingml.extract.config import ExtractConfig
from hummingml.extract.metrics import METRICS, StepMetrics
from hummingml.extract.record import Batch, source_rows
from hummingml.extract.sources import Chunk, describe
from hummingml.extract.steps import (
    CodecStep,
    CommitStep,
    DecodeStep,
    PipelineStep,
    PitchStep,
    SeparateStep,
)
from hummingml.extract.store import OutputStore

# The decode tasks and the writer reserve no CPU: they are light (under 0.1 % of the work, benchmarks/README.md), and
# a reservation of theirs could be left without a slot once the model actors hold every node's CPUs (Ray's actor-pool
# deadlock: the actors wait for input that the unscheduled decode tasks never produce). Decode tasks are capped by
# count instead (DECODE_TASKS_PER_CPU per planned CPU).
DECODE_CPUS = 0.0
COMMIT_CPUS = 0.0
DECODE_TASKS_PER_CPU = 1
# Decoded audio per block between the steps. A 30 s stereo segment with its mono mix is 8 MB: a block of its own, as
# before; a 1 s one is 265 KB, and 16 travel together, paying Ray Data's per-block cost once.
BLOCK_BYTES = 4 * 2**20
SOURCES_PER_BLOCK = 256  # at most this many listed sources per input block (one decode task's work)
CPUS_PER_WRITER = 16  # writer actors by default: one per this many planned CPUs (a writer commits ~1 batch/s)
MIN_ACTOR_CPUS = 0.1  # the smallest CPU reservation of a model actor
# The actors reserve this share of the CPUs by default (--cpu-reservation): when a node is lost, Ray restarts its actors
# on the others, which then still have room for them (up to half of the cluster lost). Reservations are not thread
# counts: threads are set apart.
RESERVED_SHARE = 0.5
MIN_CPUS = 3 * MIN_ACTOR_CPUS / RESERVED_SHARE  # one actor per model stage
# Real-time factors measured on a 2-core machine with the real architectures (benchmarks/results/stage_costs.json and
# stage_costs_dac.json, in benchmarks/README.md): seconds per second of audio of one Demucs pass (stereo), one Basic
# Pitch stream, one DAC stream. Only their ratios matter here.
STAGE_RTF = {"separate": 0.69, "pitch": 0.017, "codec": 0.99}
# ``placement="auto"`` fuses the stages into one actor per core on CPU-only clusters whose nodes have at most this many
# CPUs. Every fused actor holds every model; on larger nodes the per-stage pools hold Demucs in a few actors only
# (docs/scaling.md, "Placement").
FUSED_MAX_NODE_CPUS = 32
STEP_CLASSES: dict[str, type] = {"separate": SeparateStep, "pitch": PitchStep, "codec": CodecStep,
                                 "pipeline": PipelineStep}


@dataclass(frozen=True)
class PoolPlan:
    """Actor count, torch threads, CPUs and GPUs per actor for one model stage."""

    size: int
    threads: int  # torch intra-op threads each actor runs (set in the actor; Ray's OMP default would be 1)
    num_cpus: float  # Ray's logical reservation per actor: ``threads`` scaled so that every pool fits
    num_gpus: float


def stage_weights(cfg: ExtractConfig) -> dict[str, float]:
    """Seconds of single-core work per second of segment audio for each model stage, under ``cfg``'s streams."""
    melodic = 1 + len(cfg.melodic_stems)  # the mono reference and each melodic stem get notes and a sine
    stem_streams = len(STEMS) * (1 if cfg.stem_channels == "mono" else 2)
    codec_streams = 2 + stem_streams + 1 + cfg.mono_variants + melodic  # channels, stems, mono, variants, sines
    return {
        "separate": STAGE_RTF["separate"],
        "pitch": STAGE_RTF["pitch"] * melodic,
        "codec": STAGE_RTF["codec"] * codec_streams,
    }


def _packable(reservation: float, actors: int, node_cpus: list[float]) -> float:
    """The largest CPU reservation <= ``reservation`` with which ``actors`` equal actors fit on the nodes."""
    if not node_cpus:
        return reservation
    candidates = {reservation} | {c / k for c in node_cpus for k in range(1, actors + 1) if c / k <= reservation}
    fitting = [r for r in candidates if sum(math.floor(c / r + 1e-9) for c in node_cpus) >= actors]
    return max(fitting, default=0.0)


def fused(placement: str, gpus: float, node_cpus: list[float] | None, cpus: float) -> bool:
    """Whether ``placement`` ("auto", "fused" or "stages") means one whole-pipeline actor per core on this cluster."""
    if placement != "auto":
        return placement == "fused"
    return gpus < 1 and max(node_cpus or [cpus]) <= FUSED_MAX_NODE_CPUS


def plan_pools(
    cpus: float,
    gpus: float,
    weights: dict[str, float],
    actor_threads: int = 1,
    node_cpus: list[float] | None = None,
    placement: str = "stages",
    reserved_share: float = RESERVED_SHARE,
) -> dict[str, PoolPlan]:
    """Size the model actor pools by the threads they run, in proportion to each stage's work.

    With a fused ``placement`` (:func:`fused`) there is one pool, ``"pipeline"``, of whole-pipeline actors
    (:class:`~hummingml.extract.steps.PipelineStep`): one per ``actor_threads`` cores, on CPUs only.

    On CPUs the machine has ``floor(cpus)`` cores' worth of threads. Each stage gets its share of them by ``weights``
    (rounded, at least one actor), in actors of ``actor_threads`` torch threads; the light stages' single actors
    idle most of the time, so their threads oversubscribe the cores only briefly. Ray's logical CPUs are a
    reservation, not a thread count: each actor reserves its threads scaled so that all pools fit in
    ``reserved_share`` of ``cpus`` (below 1: room for the actors of a lost node to restart elsewhere; 1: each actor
    reserves the threads it runs) and, when ``node_cpus``
    (each node's CPUs) is given, so that they pack onto those nodes. With GPUs the separation and
    codec stages run one actor per GPU, half a GPU each.
    """
    if fused(placement, gpus, node_cpus, cpus):
        weights, gpus = {"pipeline": sum(weights.values())}, 0.0
    free = cpus - DECODE_CPUS - COMMIT_CPUS
    if free < MIN_CPUS - 1e-9:
        raise ValueError(f"the cluster has {cpus} CPUs; extraction needs at least {MIN_CPUS}")
    threads = max(1, math.floor(cpus + 1e-9))
    total = sum(weights.values())
    sizes = {}
    for stage, weight in weights.items():
        if gpus >= 1 and stage in ("separate", "codec"):
            sizes[stage] = max(1, int(gpus))
        else:
            sizes[stage] = max(1, round(threads * weight / total / actor_threads))

    def reservation() -> float:
        actors = sum(sizes.values())
        share = min(1.0, free * reserved_share / (actors * actor_threads))
        return _packable(share * actor_threads, actors, node_cpus or [])

    while reservation() < MIN_ACTOR_CPUS - 1e-9:  # many actors on few CPUs: shrink the largest pool
        biggest = max(sizes, key=lambda s: sizes[s])
        if sizes[biggest] == 1:
            raise ValueError(f"the nodes' CPUs {node_cpus} cannot hold one actor per model stage")
        sizes[biggest] -= 1
    per_actor = math.floor(reservation() * 1000 - 1e-6) / 1000  # just under: no actor depends on an exact boundary
    return {
        stage: PoolPlan(
            size=n,
            threads=actor_threads,
            num_cpus=per_actor,
            num_gpus=0.5 if gpus >= 1 and stage in ("separate", "codec") else 0.0,
        )
        for stage, n in sizes.items()
    }


def starting_size(plan: PoolPlan, planned_cpus: float, present_cpus: float) -> int:
    """Actors a pool starts with: all of ``plan`` when the cluster has the planned CPUs, else its share of them.

    The pools start at their planned size rather than growing on demand: Ray Data grows a pool only within the
    operator's share of its resource budget, which on a small machine keeps the codec at one actor.
    """
    if plan.num_gpus or present_cpus >= planned_cpus - 1e-9:
        return plan.size
    return max(1, math.floor(plan.size * present_cpus / planned_cpus))


def cluster_cpus(cfg: ExtractConfig, poll_s: float = 5.0) -> float:
    """The CPUs to size the pools for: ``cfg.plan_cpus`` or the cluster's, waiting for an autoscaler if needed.

    On an autoscaling cluster the workers may not be up when the job starts: the job asks the autoscaler for
    what it plans for (``ray.autoscaler.sdk.request_resources``) and waits up to ``cfg.wait_for_cpus_s`` for at
    least ``MIN_CPUS``.
    """
    want = max(cfg.plan_cpus, MIN_CPUS)
    have = ray.cluster_resources().get("CPU", 0.0)
    if have < want:
        from ray.autoscaler.sdk import request_resources

        request_resources(num_cpus=math.ceil(want))
    deadline = time.monotonic() + cfg.wait_for_cpus_s
    while have < MIN_CPUS:
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"the cluster has {have} CPUs after waiting {cfg.wait_for_cpus_s:.0f} s; extraction needs at least "
                f"{MIN_CPUS} (start workers, or raise --wait-for-cpus-s on an autoscaling cluster)"
            )
        time.sleep(poll_s)
        have = ray.cluster_resources().get("CPU", 0.0)
    return cfg.plan_cpus or have


def writers(cfg: ExtractConfig, cpus: float) -> int:
    """Writer actors: ``cfg.writers``, or one per ``CPUS_PER_WRITER`` planned CPUs (at least one).

    Writers commit independently: each batch is atomic and named by its rows, so a batch retried on another writer
    is not written twice (``hummingml.extract.store``).
    """
    return cfg.writers or max(1, round(cpus / CPUS_PER_WRITER))


def _decode(batch: Batch, cfg: ExtractConfig) -> Iterator[Batch]:
    """Output blocks of about ``BLOCK_BYTES`` of decoded audio, as decoded: one 30 s segment is a block of its own
    (Ray Data's backpressure then bounds a long file's memory); short segments travel many to a block."""
    yield from DecodeStep(cfg, metrics=_task_metrics).batches(batch, BLOCK_BYTES)



LISTING_IN_FLIGHT_PER_CPU = 4  # listing tasks submitted ahead of the finished ones, per CPU


def _get(refs: Any) -> Any:
    """``ray.get``, with a task's :class:`~hummingml.config.ConfigError` raised as itself (one line for the user)."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, ConfigError):
            raise exc.cause from None
        raise


def _describe_chunk(chunk: Chunk, number: int, parts: int) -> tuple[Any, ...]:
    listed = describe(chunk)
    return (*plan.split_listing(listed, number, parts), len(listed))


def _committed(root: str, parts: int) -> tuple[Any, ...]:
    from hummingml.output import current_view, view

    current = view(root, log=None) or current_view([])  # an output with no commit log has nothing committed
    return (*plan.split_state(current, parts), current.describe())


def _plan_part(
    state: dict[str, Any], retry_errors: bool, below: int, per_block: int, *listed: list[plan.Listed]
) -> Iterator[Any]:
    pending, skip, counts = plan.plan_part(list(listed), state, retry_errors, below)
    for start in range(0, len(pending), per_block):
        yield source_rows(pending[start : start + per_block], skip)
    yield counts


def _account_part(state: dict[str, Any], below: int, *listed: list[plan.Listed]) -> dict[str, Any]:
    return plan.account_part(list(listed), state, below)


@dataclass
class Listing:
    """A listed input, held in Ray's object store: ``parts[p]`` are the refs of part ``p`` of each listing chunk
    (``hummingml.extract.plan``), ``counts`` the inputs of each chunk in listing order."""

    parts: list[list[ray.ObjectRef]]
    counts: list[int]

    @property
    def total(self) -> int:
        """Inputs listed (a repeated one counted each time)."""
        return sum(self.counts)


def list_input(chunks: Iterator[Chunk]) -> Listing:
    """Describe the chunks of a listing (``hummingml.extract.sources.listing``) in tasks, a few ahead of the finished
    ones, each task's sources cut into parts by source id; the driver holds their refs and counts.

    Raises:
        ConfigError: a manifest or query row has no URI.
    """
    cpus = max(1.0, ray.cluster_resources().get("CPU", 1.0))
    parts = max(2, min(64, math.ceil(cpus)))
    describe_task = ray.remote(_describe_chunk).options(num_returns=parts + 1, num_cpus=0.5)
    listing = Listing([[] for _ in range(parts)], [])
    count_refs: list[ray.ObjectRef] = []
    for number, chunk in enumerate(chunks):
        refs = cast(list[ray.ObjectRef], describe_task.remote(chunk, number, parts))  # num_returns: one ref each
        for p in range(parts):
            listing.parts[p].append(refs[p])
        count_refs.append(refs[parts])
        ahead = len(count_refs) - int(cpus * LISTING_IN_FLIGHT_PER_CPU)
        if ahead > 0:
            ray.wait(count_refs[:ahead], num_returns=ahead)
    listing.counts = _get(count_refs)
    return listing


def _state(root: str, parts: int) -> tuple[list[ray.ObjectRef], dict[str, Any]]:
    """The output's committed state cut into parts (refs), read by a task, and the whole output's description."""
    refs = cast(list[ray.ObjectRef], ray.remote(_committed).options(num_returns=parts + 1).remote(root, parts))
    return refs[:parts], _get(refs[parts])


Committed = tuple[list[ray.ObjectRef], dict[str, Any]]  # the committed state's parts (refs), the output described


def plan_run(cfg: ExtractConfig, listing: Listing) -> tuple[list[ray.ObjectRef], dict[str, Any], Committed]:
    """The blocks of the inputs this run processes (refs of the pipeline's first blocks), the plan's counts
    (``hummingml.extract.plan.plan_part``, summed) and the committed state planned against: one task per part joins
    its listing with its committed state."""
    parts = len(listing.parts)
    committed = _state(cfg.output, parts)
    state = committed[0]
    below = plan.cutoff(listing.counts, cfg.limit)
    cpus = cfg.plan_cpus or ray.cluster_resources().get("CPU", 1.0)
    decode_tasks = max(1, math.floor(cpus * DECODE_TASKS_PER_CPU))
    per_block = max(1, min(SOURCES_PER_BLOCK, -(-listing.total // (decode_tasks * 4))))  # several per decode task
    task = ray.remote(_plan_part).options(num_returns="streaming")
    generators = [task.remote(state[p], cfg.retry_errors, below, per_block, *listing.parts[p]) for p in range(parts)]
    blocks, counts = [], []
    for generator in generators:
        refs = list(generator)
        blocks += refs[:-1]
        counts.append(_get(refs[-1]))
    return blocks, plan.add_counts(counts), committed


def account_run(
    cfg: ExtractConfig, listing: Listing, committed: Committed | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """What became of this run's inputs (``hummingml.extract.plan.account_part``, summed) and the whole output's
    description, from ``committed`` (a state read earlier, when nothing was committed since) or the output's now."""
    parts = len(listing.parts)
    state, output = committed or _state(cfg.output, parts)
    below = plan.cutoff(listing.counts, cfg.limit)
    task = ray.remote(_account_part)
    return plan.add_counts(_get([task.remote(state[p], below, *listing.parts[p]) for p in range(parts)])), output


def _tidy(root: str, staging_min_age_s: float) -> tuple[int, int, str]:
    warnings = io.StringIO()  # the store's warnings (damaged markers set aside), for the driver's log
    store = OutputStore(root, log=warnings)
    return store.recover(staging_min_age_s), store.roll_up(), warnings.getvalue()


def _finish(root: str, summary: dict[str, Any]) -> int:
    store = OutputStore(root)
    rolled = store.roll_up()
    store.write_summary(summary)
    return rolled


def tidy_output(root: str, staging_min_age_s: float) -> tuple[int, int, str]:
    """Recover the output (``OutputStore.recover``) and roll its JSON markers up (``roll_up``) in a task, so that
    the driver never holds the commit log; returns (uncommitted batches dropped, markers rolled up, the warnings
    the store wrote)."""
    return cast(tuple[int, int, str], _get(ray.remote(_tidy).remote(root, staging_min_age_s)))


def finish_output(root: str, summary: dict[str, Any]) -> int:
    """Roll up the run's markers, then write ``summary.json`` and the dataset card, in a task; returns the markers
    rolled up."""
    return cast(int, _get(ray.remote(_finish).remote(root, summary)))


def build_dataset(
    cfg: ExtractConfig,
    blocks: list[ray.ObjectRef],
    metadata: dict[str, Any],
    frame_rate: float,
    log: TextIO | None = None,
    lease: str = "",
) -> ray.data.Dataset:
    """read -> decode/segment (tasks) -> separate -> pitch + sine -> codec (actor pools) -> commit (writer pool).

    ``blocks`` are the first blocks (``plan_run``). The pool plan is printed to ``log``; ``lease`` is the driver's
    lease token, which the writer checks before each commit.
    """
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = cfg.ray_progress
    if not cfg.ray_progress:
        # Ray Data repeats "uses 3.0GiB of memory per worker ... consider setting memory=" every 30 s for the model
        # actors, which reserve no memory (a reservation sized for the full models would leave a laptop's actors
        # unscheduled); their measured memory is in docs/scaling.md ("Placement"). --ray-progress shows it again.
        context.issue_detectors_config.high_memory_detector_config.detection_time_interval_s = -1
    cpus, gpus = cluster_cpus(cfg), ray.cluster_resources().get("GPU", 0.0)
    present = ray.cluster_resources().get("CPU", 0.0)
    nodes = [n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU")]
    # pack onto the nodes that are up when they are all the plan is for; an autoscaling cluster's are not known yet
    # the nodes that are up tell the node size even when more are coming (an autoscaling cluster)
    placement = "fused" if fused(cfg.placement, gpus, nodes or None, cpus) else "stages"
    plans = plan_pools(cpus, gpus, stage_weights(cfg), cfg.actor_threads, nodes if present >= cpus - 1e-9 else None,
                       placement, cfg.cpu_reservation)
    if log is not None:
        pools = ", ".join(f"{s} {p.size} x {p.threads} thread(s) ({p.num_cpus} CPU, {p.num_gpus} GPU)"
                          for s, p in plans.items())
        print(f"[extract] actor pools for {cpus:g} CPUs, {gpus:g} GPUs: {pools}; {writers(cfg, cpus)} writer(s)",
              file=log, flush=True)
    decode_tasks = max(1, math.floor(cpus * DECODE_TASKS_PER_CPU))
    ds: ray.data.Dataset = ray.data.from_arrow_refs(cast(Any, blocks))  # Ray's stub names another ObjectRef class
    ds = ds.map_batches(cast(Any, _decode), fn_kwargs={"cfg": cfg}, batch_size=None, batch_format="pyarrow",
                        num_cpus=DECODE_CPUS, compute=ray.data.TaskPoolStrategy(size=decode_tasks))
    for stage, pool in plans.items():
        ds = ds.map_batches(
            STEP_CLASSES[stage],
            fn_constructor_kwargs={"cfg": cfg, "threads": pool.threads, "metrics": RayMetrics},
            compute=ray.data.ActorPoolStrategy(min_size=starting_size(pool, cpus, present), max_size=pool.size),
            batch_size=1,
            batch_format="pyarrow",
            num_cpus=pool.num_cpus,
            num_gpus=pool.num_gpus,
        )
    return ds.map_batches(
        CommitStep,
        fn_constructor_kwargs={"cfg": cfg, "run_metadata": metadata, "frame_rate": frame_rate, "metrics": RayMetrics,
                              "lease": lease},
        compute=ray.data.ActorPoolStrategy(size=writers(cfg, cpus)),
        batch_size=cfg.commit_rows,
        batch_format="pyarrow",
        num_cpus=COMMIT_CPUS,
    )


# s: how often a process sets its gauges again. Ray's metrics agent drops a gauge that was not set within two report
# intervals (2 x metrics_report_interval_ms, 10 s by default), even while the process that set it lives.
GAUGE_REFRESH_S = 5.0


class RayMetrics(StepMetrics):
    """:data:`~hummingml.extract.metrics.METRICS` as Ray metrics, made in the process that reports them.

    Each node's metrics agent exports them to Prometheus as ``ray_<name>`` (docs/monitoring.md), and the Ray
    dashboard's Metrics view shows them with Prometheus and Grafana. A thread sets every gauge again each
    ``refresh_s`` seconds until :meth:`close`, so that a gauge of a long batch stays exported.
    """

    def __init__(self, refresh_s: float = GAUGE_REFRESH_S) -> None:
        super().__init__()
        kinds = {k: {n: m for n, m in METRICS.items() if m.kind == k} for k in ("counter", "gauge", "histogram")}
        self.counters = {n: Counter(n, m.description, m.tag_keys) for n, m in kinds["counter"].items()}
        self.gauges = {n: Gauge(n, m.description, m.tag_keys) for n, m in kinds["gauge"].items()}
        self.histograms = {
            n: Histogram(n, m.description, list(m.boundaries), m.tag_keys) for n, m in kinds["histogram"].items()
        }
        self.values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}  # (gauge, tags) -> its last value
        self.lock = threading.Lock()
        self.closed = threading.Event()
        threading.Thread(target=self._refresh, args=(refresh_s,), name="hummingml-gauges", daemon=True).start()

    def _refresh(self, every_s: float) -> None:
        while not self.closed.wait(every_s):
            with self.lock:
                for (metric, tags), value in self.values.items():
                    self.gauges[metric].set(value, tags=dict(tags))

    def close(self) -> None:
        """Stop setting the gauges again: Ray's agent drops them after two report intervals."""
        self.closed.set()

    def inc(self, metric: str, value: float, tags: dict[str, str] | None = None) -> None:
        """Add ``value`` to the Ray counter ``metric`` (nothing for 0: a Ray counter takes only positive values)."""
        if value > 0:
            self.counters[metric].inc(value, tags=tags or {})

    def set(self, metric: str, value: float, tags: dict[str, str] | None = None) -> None:
        """Set the Ray gauge ``metric`` (and again every ``refresh_s`` until :meth:`close`)."""
        with self.lock:
            self.values[(metric, tuple(sorted((tags or {}).items())))] = value
            self.gauges[metric].set(value, tags=tags or {})

    def observe(self, metric: str, value: float, tags: dict[str, str] | None = None) -> None:
        """Add an observation to the Ray histogram ``metric``."""
        self.histograms[metric].observe(value, tags=tags or {})


@functools.cache
def _task_metrics() -> RayMetrics:
    """The decode tasks' reporter: one per worker process, which runs one task at a time (its in-flight counts)."""
    return RayMetrics()
