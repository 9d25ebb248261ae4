"""Paper finding 6: distilling on out-of-domain images still transfers, in-domain is best."""

from ablate.study import Study, variant

STUDY = Study(
    name="ood",
    question="Does function matching on out-of-domain images (only footwear and bags, no garments) still distil "
             "a useful 10-class Fashion-MNIST student? Same number of training images; evaluated on all classes.",
    base=dict(policy="funmatch", epochs=300, eval_spacing="linear"),
    axes=dict(data=[variant("in-domain", dataset="fashion_mnist", subset_per_class=100),
                    variant("footwear+bags only", dataset="fashion_mnist_ood", subset_per_class=250)]),
    seeds=2,
    presets=dict(quick=dict(epochs=20, seeds=1, num_evals=4), full=dict(epochs=300, seeds=2)),
    figures=("final", "curves"),
)
