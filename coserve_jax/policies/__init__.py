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
4. Batch working memory from the pool's free bytes (``batch_memory: dynamic``; engine/memory.py
   ``fit_batch``). The paper splits each executor's memory once: a fixed share for its
   largest batch, the rest for experts. Ours keeps no fixed share: a batch takes what its size
   needs from the free bytes when it starts (up to the profiled maximum batch), first evicting
   experts no queued work needs, and splits to what fits otherwise. Why: small batches leave
   room for more experts and prefetches, and a large queued group can run a larger batch than
   the fixed split allows (demo: batch memory for 24 classifier images is 4.5 classifiers'
   bytes). The pool is first filled as if the fixed share were set aside, so the first batches
   do not evict what was just preloaded.
5. Next-group prefetch (``placement.NextGroup``): while a batch runs, start the load of the
   next queued group's missing expert — one at a time into GPU pools, two into CPU pools, and
   only into the pools of the fastest executor kind present (GPU if there is one).
   A prefetch never evicts an expert that running or queued work on its pool needs, on any
   executor sharing the pool (engine/loop.py ``_prefetch``), and with dynamic batch memory it
   leaves one full batch's working memory free. Why: an eviction of needed work only moves a
   load or adds a reload (paper-scale NUMA A2, simulated: 1,022 switches without the rule, 169
   with it); a prefetch that fills the room a queued batch needs only shrinks that batch.
   Into GPU pools a host->GPU copy runs beside GPU compute; a second one in flight slows the
   demand loads on the one disk (UMA A2, simulated: 28.05 -> 27.75 img/s), so one. A CPU
   executor beside GPUs is a helper: its prefetches share the disk with the GPUs' demand loads
   (NUMA A2, simulated, 6-24 GiB: 27.3-28.3 img/s with them, 28.3-29.0 without). On a
   CPU-only machine two prefetches at a time pay once batch memory is dynamic (demo, simulated,
   6 seeds: 41-64% of the coserve -> all_resident gap closed without CPU prefetch, 57-72% with
   it); while batch memory was reserved the pool had no room for them and they did not pay.
"""
