"""Adam (the paper's) against alternatives optax provides.

The paper also tries Shampoo. No maintained Shampoo package works with jax 0.10
(optax-shampoo 0.0.6 calls the removed jax.tree_map; distributed-kron 2.0.0
fails at import), and optax 0.2.8 ships none, so this study compares Adam with
Lion and Nesterov momentum SGD through the same clip/decay/schedule chain.
"""

from ablate.study import Study

STUDY = Study(
    name="optimizer",
    question="Does the optimiser matter for function matching? Adam vs Lion vs SGD with Nesterov momentum.",
    base=dict(policy="funmatch", epochs=300),
    axes=dict(optimizer=["adam", "lion", "sgdm"]),
    zipped=(),
    seeds=2,
    presets=dict(quick=dict(epochs=20, seeds=1, num_evals=4), full=dict(epochs=300, seeds=2)),
    figures=("final", "curves"),
)
