"""The KD benchmarks' losses crossed with the paper's teacher-input policies: does function matching's gain hold for
every loss, and does any loss beat KL under function matching?

Each loss at its published defaults (`ablate list`; ablate/losses.py gives the sources):
- `kl`: KL at T = 1, the paper's loss (Beyer et al., CVPR 2022).
- `dkd(temperature=4)`: DKD with alpha 1, beta 8 and T 4, mdistiller's CIFAR-100 setting (Zhao et al., CVPR 2022).
- `dist`: DIST with beta = gamma = 1 and tau 1 (Huang et al., NeurIPS 2022). It couples a batch's rows, so its cells
  train on whole batches (no lanes).
- `kl(ls=2)`: KL on z-scored logits at base temperature 2 (Sun et al., CVPR 2024). Their loss weight 9 is left out:
  with Adam the update does not depend on a constant weight of the loss (up to clipping and Adam's epsilon).
- `kl + at`: KL plus attention transfer on the three stages' outputs, beta 1000 (Zagoruyko & Komodakis, ICLR 2017;
  mdistiller's weight). A fixed teacher caches logits only, so `kl + at` has no `fix/ic_ens` cell.

The learning rate is each loss's best of {1e-2, 3e-2, 1e-1} on the validation split under function matching
(`kd_zoo_lr`, 100 epochs, one seed; reports/kd_zoo_lr): 3e-2, the distilling students' rate (studies/hparams.py),
for `kl` and `dkd`; 1e-2 for `dist` and `kl(ls=2)`; 1e-1 for `kl + at`, the edge of that grid (its AT term,
weighted 1000, dominates the gradient). `dist` at 1e-2 led 3e-2 by 0.3 points, one seed: within noise, taken as the
rule says.
"""

from ablate.study import Study, variant

LR = {"kl": 3e-2, "dkd(temperature=4)": 3e-2, "dist": 1e-2, "kl(ls=2)": 1e-2, "kl + at": 1e-1}  # from kd_zoo_lr
LOSSES = [variant(loss, loss=loss, lr=lr) for loss, lr in LR.items()]

STUDY = Study(
    name="kd_zoo",
    question="Does function matching's gain over a fixed teacher hold for every KD loss, and does any loss beat KL?",
    base=dict(epochs=300, eval_spacing="linear"),
    axes=dict(loss=LOSSES, policy=["fix/ic_ens", "same/ic", "funmatch"]),
    exclude=(dict(loss="kl + at", policy="fix/ic_ens"),),
    seeds=3,
    presets=dict(quick=dict(epochs=100, subset_per_class=20, seeds=1, num_evals=3),
                 full=dict(epochs=300, seeds=3)),
    x="loss",
    hue="policy",
    figures=("final", "curves"),
)
