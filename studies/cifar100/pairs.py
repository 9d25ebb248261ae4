"""CIFAR-100 with CRD's and mdistiller's teacher/student pairs: does the paper's function matching change the
benchmark's answer, for plain KD and for DKD?

Pairs (teacher -> student, parameters at 100 classes): resnet32x4 (7,433,860) -> resnet8x4 (1,233,540) and
wrn_40_2 (2,255,156) -> wrn_16_2 (703,284). Published test top-1 (%) to compare with (teachers and students alone:
CRD, Tian et al., ICLR 2020; KD and DKD: mdistiller's README and the DKD paper, Zhao et al., CVPR 2022):

    | pair                     | teacher | student alone | KD (T 4) | DKD   |
    |--------------------------|---------|---------------|----------|-------|
    | resnet32x4 -> resnet8x4  | 79.42   | 72.50         | 73.33    | 76.32 |
    | wrn_40_2 -> wrn_16_2     | 75.61   | 73.26         | 74.92    | 76.23 |

and for resnet32x4 -> resnet8x4, DIST 76.31 (Huang et al., NeurIPS 2022) and KD with logit standardisation 76.62
(Sun et al., CVPR 2024).

The benchmark's recipe (mdistiller's CIFAR-100 configs), kept here: 240 epochs of the 50,000 training images
(here 45,000: 5,000 are held out for validation), batch 64, SGD with momentum 0.9, lr 0.05, weight decay 5e-4;
KD is 0.1 CE + 0.9 KL at T = 4 (times T^2), DKD is CE + DKD(alpha 1, beta 8, T 4) with its loss weight ramped up
over the first 20 epochs. The benchmark's teacher sees the student's own augmented image (pad-4 random crop and
flip): in the paper's terms a consistent teacher, `same/rc`. Function matching (`funmatch`) gives both models one
inception crop of the padded image, then mixup.

What differs from the benchmark, so compare trends rather than the last decimal: GroupNorm instead of BatchNorm
(`ablate/models/cifar.py`); Nesterov momentum (`sgdm`); a cosine schedule after a 1-epoch warm-up instead of
steps at 150/180/210; decoupled weight decay on kernels only; global-norm clipping at 5 (mdistiller clips
nothing); the teachers are ablate's own (`cifar100_resnet32x4`, `cifar100_wrn_40_2`, trained by `ablate teacher
train NAME` with the same recipe and labels only), not CRD's checkpoints.

CIFAR-100 cannot be downloaded on machines without internet; `ablate run cifar100/pairs --dry-run` estimates the
cost without the data.
"""

from ablate.study import Study, variant

RECIPE = dict(dataset="cifar100", resolution=32, subset_per_class=None, epochs=240, batch_size=64,
              optimizer="sgdm", lr=0.05, wd=5e-4, warmup_frac=1 / 240, clip=5.0, temperature=4.0,
              num_evals=12, eval_spacing="linear")
KD = "0.9*kl + 0.1*label_ce"
DKD = "dkd(warmup=0.083333) + label_ce"  # 20 of 240 epochs

STUDY = Study(
    name="cifar100_pairs",
    question="On CIFAR-100's standard pairs, does function matching beat the benchmark's consistent teacher, for "
             "KD and for DKD?",
    base=RECIPE,
    # the pair comes first, so that the label-only variant's teacher=None is applied after the pair's teacher
    axes=dict(pair=[variant("resnet32x4 -> resnet8x4", teacher="cifar100_resnet32x4", model="resnet8x4"),
                    variant("wrn_40_2 -> wrn_16_2", teacher="cifar100_wrn_40_2", model="wrn_16_2")],
              policy=[variant("student alone", policy="supervised/rc", loss="label_ce", teacher=None),
                      variant("KD same/rc", policy="same/rc", loss=KD),
                      variant("KD funmatch", policy="funmatch", loss=KD),
                      variant("DKD same/rc", policy="same/rc", loss=DKD),
                      variant("DKD funmatch", policy="funmatch", loss=DKD)]),
    seeds=3,
    presets=dict(quick=dict(epochs=2, seeds=1, num_evals=2), full=dict(epochs=240, seeds=3)),
    x="policy",
    hue="pair",
    figures=("final", "curves"),
)
