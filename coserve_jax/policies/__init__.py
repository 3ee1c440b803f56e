"""Scheduling, eviction, initialisation and prefetch policies.

Pure Python: a policy reads an immutable-by-contract view of the engine and returns a decision.
No JAX, no I/O, no clock — so the same objects drive the real engine and the simulator.

The paper's CoServe (``arm_catalog.coserve``): ``scheduling.LatencyAware`` (assign + arrange),
the engine's split to the executor's maximum batch, ``eviction.TwoStage`` and
``placement.RoundRobinByUsage``. Samba-CoE: ``scheduling.FCFS``/``RoundRobin`` with
``eviction.LRU``/``FIFO``.

Ours, ``coserve_plus`` — each idea kept only because it pays in the same run (figures in
experiments/coserve_plus/README.md, from ``+experiment=plus_ablation``, which removes one idea
at a time, on the real demo engine and in the simulator):
1. One model pool per device shared by its executors (``share_pool``; engine/build.py). Why: on
   one memory, per-executor pools split the budget and load the same expert twice; a shared
   pool holds more distinct experts and loads each once.
2. Work-conserving group order (``LatencyAware(work_conserving=True)``). Why: when the head
   group's expert is not resident, an executor runs a queued group whose expert is, instead of
   idling through the switch.
3. Queue-aware eviction (``eviction.QueueAware``): experts the arranged queues will use are
   ranked by exact next use (Belady on the known future); the rest go first, cheapest expected
   reload cost per byte freed first (usage probability × reload seconds / bytes). Why: the
   arranged queue *is* the near future; probabilities only guess it.
4. Next-group prefetch into GPU pools only (``placement.NextGroup(kinds=[gpu])``). Why: it
   starts the next missing expert's load while the current batch runs. A host->GPU copy runs
   beside GPU compute and pays (paper-scale simulation: +4..+18% with it, UMA needs it to beat
   coserve_best); a load into a CPU pool is CPU work that competes with the batch it should hide
   behind, and it did not pay there (real demo: +6% without it; simulator: -0.3..+5%; with
   reads in reader processes and the rule below: neutral, 1,538 vs 1,525 img/s).
   A prefetch never evicts an expert that running or queued work on its pool needs, on any
   executor sharing the pool (engine/loop.py ``_prefetch``). Why: such an eviction only moves a
   load or adds a reload; at paper scale (NUMA A2, simulated) protecting only the prefetching
   executor's own queue let coserve_plus make 1,022 switches, this rule 169 (27.5 -> 27.9 img/s).
"""
