"""The GPU check of issue #11: correctness, speed, the paper's protocol time, bottle accuracy.

    python benchmarks/gpu_check.py --prepare-only --out device_data/bottle   # CPU, once
    PYTHONPATH=src python3 benchmarks/gpu_check.py --budget-s 420           # on the GPU
    python benchmarks/gpu_check.py --smoke                                  # CPU, tiny, ~1 min

One command, one device call; it writes ``$OUT/gpu_check.json`` after every phase (so a
run killed at its time limit still returns what it measured) and ``$OUT/gpu_check.log``,
and prints a short table last.  Phases (``--phases``, a-d by default):

a. correctness: each network trains 2 epochs with the committed settings (bf16,
   channels_last, deterministic) on the real bottle sample: finite, falling loss; two
   uninterrupted runs and a run killed after epoch 1 and resumed are compared bit for
   bit (the non-deterministic kernels PyTorch warned about are named); evaluate and
   ``predict`` run on the device; the masks of device and CPU inference of the same
   weights are compared pixel by pixel.
b. throughput at full width, 128 px, batch 8, one network at a time: ``ours`` (the loop
   as committed), each speed lever (``MODES``; ``--try-compile`` adds torch.compile) and
   the ``plain`` loop (train_throughput.plain_images_per_second: PNG DataLoader, fp32).
   ``fastest`` is the best lever set per network.
c. the paper's protocol time (4 networks x 200 epochs x 1006 images): the four networks
   train at once, one process each, in their fastest mode, until a time window closes;
   measured when all finish 200 epochs in it, else projected from the steady-state
   epochs (at least 5 per network; the first epoch is warm-up).
d. the real bottle sample (50 train / 13 test) with the paper's protocol (params.yaml's
   base values: full width, Adam, lr 1e-4, 200 epochs, batch 8, cross-entropy, no
   augmentation), ``--seeds`` per network, all runs at once (one process each): test
   IOU/Dice mean and sample std per network beside the paper's bottle row.  When the
   measured speed says 200 epochs do not fit the time left, the epochs are scaled down
   and the result says so (``protocol_complete: false``).
e. the paper's protocol run as a user runs it on one GPU (only when ``--phases`` names
   it): the four networks one after another in this process, with params.yaml's committed
   settings (what ``dvc repro`` trains), on ``--protocol-images`` generated images for
   ``--protocol-epochs`` epochs (1006 and 200 by default; small values make a rehearsal
   that runs in seconds on the CPU).  Wall seconds per network and in all
   (``protocol_run``; ``full_protocol_measured`` and ``full_protocol_wall_s`` when all
   four finished), and the plain loop's time for the same work over ours (``vs_plain``;
   the plain loop's images/s from phase b of this call, else measured first).  Each
   network gets an equal share of the time left of ``--budget-s`` when it starts; one
   that does not finish in it is projected from its epochs done
   (``full_protocol_measured: false``, ``projected_s``).

``--previous gpu_check.json`` starts from an earlier call's results on the same GPU model
and fills only what it lacks (phase b's unmeasured modes, phase d's unfinished networks).

The budget (``--budget-s``) is split between the phases by measured speed; every worker
process is killed at its phase's limit, so the script ends within the budget plus a few
seconds.  ``--smoke`` runs every phase with tiny networks on the CPU (tests/test_gpu_check.py).
The worker processes are this script (``--worker spec.json``).

The code: :mod:`gpucheck.settings` (constants, sizes), :mod:`gpucheck.workers` (one
training job per process), :mod:`gpucheck.runner` (running them within their limits),
:mod:`gpucheck.projections`, :mod:`gpucheck.report`, :mod:`gpucheck.phases` (a-e) and
:mod:`gpucheck.cli` (``main``); ``benchmarks/gpu_check.py`` is the entry point.
It needs only torch, numpy, pyyaml and ``PYTHONPATH=src`` (no DVC, no MLflow).
"""
