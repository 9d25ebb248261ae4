"""Adam (the paper's) against alternatives optax provides.

The paper also tries Shampoo. No maintained Shampoo package works with jax 0.10
(optax-shampoo 0.0.6 calls the removed jax.tree_map; distributed-kron 2.0.0
fails at import), and optax 0.2.8 ships none, so this study compares Adam with
Lion and Nesterov momentum SGD through the same clip/decay/schedule chain.

Every optimiser runs at the learning rate chosen for Adam (3e-2, `studies/hparams.py`);
Lion usually wants a 3-10x smaller one and SGD another, so this grid asks whether
Adam's setting transfers, not which optimiser is best when each is tuned. For that,
add an `lr` axis.
"""

from ablate.study import Study

STUDY = Study(
    name="optimizer",
    question="Does the optimiser matter for function matching? Adam vs Lion vs SGD with Nesterov momentum, "
             "all at Adam's tuned lr (not tuned per optimiser).",
    base=dict(policy="funmatch", epochs=300, eval_spacing="linear"),
    axes=dict(optimizer=["adam", "lion", "sgdm"]),
    zipped=(),
    seeds=2,
    presets=dict(quick=dict(epochs=20, seeds=1, num_evals=4), full=dict(epochs=300, seeds=2)),
    figures=("final", "curves"),
)
